/*
 * packer launcher: the first bytes of every model.run.
 *
 * model.run = [this launcher][runtime archive][zstd GGUF][manifest JSON][trailer v2]
 * (the layout is described in packer/runtime/payload.py). The launcher reads the trailer of its
 * own file (/proc/self/exe), unpacks the runtime archive (a PyInstaller onedir tree, see
 * packer/archive.py for the format) once into <cache>/runtime/<key>/, then execs the frozen
 * runtime with PACKER_BUNDLE=<this file>. The cache folder is chosen as resolve_cache_dir() in
 * packer/runtime/cache.py chooses it (the one definition; keep resolve_cache_dir below in step):
 * --cache-dir DIR | PACKER_CACHE | $XDG_CACHE_HOME/packer | $HOME/.cache/packer (no $HOME: the
 * passwd file's entry) | $XDG_RUNTIME_DIR/packer | $TMPDIR/packer-UID.
 *
 * Trust: a cache folder must be a real folder (not a symlink) owned by the effective uid and
 * writable by nobody else, on a filesystem that allows exec; one that is not is skipped (or,
 * named by --cache-dir/PACKER_CACHE, refused in one line). Its runtime/ folder is made 0700, so
 * everything under it was written by this uid. Only files this uid owns count as unpacked.
 *
 * Safety: unpacking happens under an flock, into a temp folder next to the target, and the
 * folder is renamed into place only after the archive's sha256 matched the key in the trailer
 * and its completion marker (a list of every file and its size) is written; a folder whose
 * marker is missing or does not match the files is replaced, unless another process is running
 * from it (its .inuse lock, below).
 *
 * Old runtimes: every start holds a shared flock on <cache>/runtime/<key>.inuse for the whole
 * life of the runtime (the descriptor survives the exec) and sets that file's mtime (last use).
 * After unpacking a new runtime, the launcher removes the other runtime folders that nobody
 * holds and nobody started for KEEP_DAYS days (each about 120 MB). Lock files stay (0 bytes):
 * unlinking a lock file others may have opened would let two processes "hold" it at once.
 *
 * Built statically (build/launcher.sh) so it runs on any x86-64 Linux: no NSS (getpwuid) here;
 * /etc/passwd is read as a plain file.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "sha256.h"

#define TRAILER_SIZE 96
#define KEY_LEN 32
#define MARKER ".packer-complete"
#define MARKER_HEAD "packer-runtime 1 "
#define RUNTIME_EXE "packer-runtime"
#define ARCHIVE_MAGIC "PKRARCH1"
#define ENTRY_HEAD 17 /* type u8 | mode u32 | path_len u32 | size u64, little-endian */
#define KEEP_DAYS 30   /* an unused runtime folder is removed this long after its last start */
#define MAX_CANDIDATES 5
#define CACHE_ADVICE                                                                              \
    "set PACKER_CACHE=/some/dir or pass --cache-dir (a folder of your own that no one else can " \
    "write, on a filesystem that allows running programs)"

static const char MAGIC_V2[8] = {'P', 'A', 'C', 'K', 'E', 'R', 0, 2};
static const char MAGIC_V1[8] = {'P', 'A', 'C', 'K', 'E', 'R', 0, 1};

static const char *prog = "model.run";
static const char *cleanup_dir; /* a temp folder to remove when dying mid-unpack */

static void rm_tree(const char *path);

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: error: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (cleanup_dir) rm_tree(cleanup_dir);
    exit(1);
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- trailer ---------------------------------------------------------------------------- */

struct layout {
    uint64_t runtime_off, runtime_size, payload_off, payload_size, manifest_off, manifest_size;
    char key[KEY_LEN + 1];
};

/* off + size <= limit, without the wrap-around of a u64 addition */
static int fits(uint64_t off, uint64_t size, uint64_t limit) {
    return size <= limit && off <= limit - size;
}

static void read_layout(int fd, const char *name, struct layout *l) {
    struct stat st;
    unsigned char t[TRAILER_SIZE];
    if (fstat(fd, &st) != 0) die("cannot read %s: %s", name, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (size < TRAILER_SIZE)
        die("%s is too small to hold a model: the file is truncated; copy it again", name);
    if (pread(fd, t, TRAILER_SIZE, (off_t)(size - TRAILER_SIZE)) != TRAILER_SIZE)
        die("cannot read %s: %s", name, strerror(errno ? errno : EIO));
    if (memcmp(t + TRAILER_SIZE - 8, MAGIC_V1, 8) == 0)
        die("%s uses the old single-file layout, which this launcher cannot start: rebuild it "
            "with packer build", name);
    if (memcmp(t, MAGIC_V2, 8) != 0 || memcmp(t + TRAILER_SIZE - 8, MAGIC_V2, 8) != 0)
        die("%s has no model attached (its end is missing or damaged): the file is truncated or "
            "corrupted; copy it again", name);
    l->runtime_off = le64(t + 8);
    l->runtime_size = le64(t + 16);
    l->payload_off = le64(t + 24);
    l->payload_size = le64(t + 32);
    l->manifest_off = le64(t + 40);
    l->manifest_size = le64(t + 48);
    memcpy(l->key, t + 56, KEY_LEN);
    l->key[KEY_LEN] = 0;
    uint64_t end = size - TRAILER_SIZE;
    int ok = fits(l->runtime_off, l->runtime_size, l->payload_off) &&
             fits(l->payload_off, l->payload_size, l->manifest_off) &&
             fits(l->manifest_off, l->manifest_size, end) &&
             l->manifest_off + l->manifest_size == end;
    for (int i = 0; i < KEY_LEN && ok; i++)
        ok = (l->key[i] >= '0' && l->key[i] <= '9') || (l->key[i] >= 'a' && l->key[i] <= 'f');
    if (!ok) die("%s has an inconsistent layout: the file is corrupted; copy it again", name);
    if (l->runtime_size == 0)
        die("%s has no runtime attached: rebuild it with packer build", name);
}

/* ---- cache folder ----------------------------------------------------------------------- */

/* Create path and its missing parents (0700). Returns 0, or -1 with errno set. */
static int mkdirs(const char *path) {
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* Why `st` (from lstat) is no folder of ours, or NULL: a real folder (not a symlink) owned by
 * the effective uid. */
static const char *not_ours(const struct stat *st) {
    if (S_ISLNK(st->st_mode)) return "is a symlink";
    if (!S_ISDIR(st->st_mode)) return "is not a folder";
    if (st->st_uid != geteuid()) return "is owned by another user";
    return NULL;
}

/* Why `dir` cannot be the cache folder, or NULL when it can (creating it, 0700, if missing):
 * a real folder of ours that no one else can write, writable, on a filesystem allowing exec.
 * `why` receives a phrase that follows the folder's name. */
static const char *cache_dir_problem(const char *dir, char *why, size_t n) {
    struct stat st;
    struct statvfs vfs;
    const char *problem;
    if (mkdirs(dir) != 0 || lstat(dir, &st) != 0) {
        snprintf(why, n, "cannot be created (%s)", strerror(errno));
        return why;
    }
    if ((problem = not_ours(&st))) return problem;
    if (st.st_mode & 022) return "is writable by other users";
    if (access(dir, W_OK | X_OK) != 0) return "is not writable";
    if (statvfs(dir, &vfs) == 0 && (vfs.f_flag & ST_NOEXEC))
        return "is on a filesystem mounted noexec (no program can start from there)";
    return NULL;
}

/* A subfolder of the cache: created 0700 if missing; it must be a real folder of ours, and is
 * made 0700 if it is not (then only this uid can have written anything under it from now on;
 * what others wrote there before is not owned by us, and nothing not owned by us is used). */
static void private_subdir(const char *dir) {
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) die("cannot create %s: %s", dir, strerror(errno));
    if (lstat(dir, &st) != 0) die("cannot use %s: %s", dir, strerror(errno));
    const char *problem = not_ours(&st);
    if (problem) die("the cache folder %s %s: remove it, or %s", dir, problem, CACHE_ADVICE);
    if ((st.st_mode & 07777) != 0700 && chmod(dir, 0700) != 0)
        die("cannot make %s private: %s", dir, strerror(errno));
}

static char *join(const char *a, const char *b) {
    char *out;
    if (asprintf(&out, "%s/%s", a, b) < 0) die("out of memory");
    return out;
}

static char *expand_user(const char *p) {
    const char *home = getenv("HOME");
    if (p[0] == '~' && (p[1] == '/' || p[1] == 0) && home && *home) return join(home, p + 1 + (p[1] == '/'));
    char *out = strdup(p);
    if (!out) die("out of memory");
    return out;
}

static const char *env_nonempty(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Python's tempfile.gettempdir(): the first writable of $TMPDIR, $TEMP, $TMP, /tmp, /var/tmp. */
static const char *temp_root(void) {
    const char *c[] = {env_nonempty("TMPDIR"), env_nonempty("TEMP"), env_nonempty("TMP"),
                       "/tmp", "/var/tmp", "/usr/tmp"};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        struct stat st;
        if (c[i] && stat(c[i], &st) == 0 && S_ISDIR(st.st_mode) && access(c[i], W_OK | X_OK) == 0)
            return c[i];
    }
    return "/tmp";
}

/* $HOME, else the home folder of this uid in /etc/passwd (read directly: no NSS when static). */
static const char *home_dir(void) {
    const char *home = env_nonempty("HOME");
    if (home) return home;
    static char found[PATH_MAX];
    FILE *f = fopen("/etc/passwd", "re");
    if (!f) return NULL;
    char line[4096];
    const char *out = NULL;
    while (!out && fgets(line, sizeof line, f)) {
        char *field[7] = {0}, *tok = line;
        int n = 0;
        for (char *p = line;; p++) { /* split on ':' keeping empty fields */
            if (*p == ':' || *p == '\n' || *p == 0) {
                int end = *p != ':';
                *p = 0;
                if (n < 7) field[n++] = tok;
                tok = p + 1;
                if (end) break;
            }
        }
        if (n >= 6 && field[2][0] && strtoul(field[2], NULL, 10) == getuid() && field[5][0] == '/') {
            snprintf(found, sizeof found, "%s", field[5]);
            out = found;
        }
    }
    fclose(f); /* a read error only means no entry was found */
    return out;
}

static const char *explicit_cache_dir(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strcmp(argv[i], "--cache-dir") == 0 && i + 1 < argc) return argv[i + 1];
        if (strncmp(argv[i], "--cache-dir=", 12) == 0) return argv[i] + 12;
    }
    return NULL;
}

/* The rules of resolve_cache_dir() in packer/runtime/cache.py, repeated in C: the first
 * candidate without a problem (cache_dir_problem); an explicit choice is the only candidate. */
static char *resolve_cache_dir(int argc, char **argv) {
    char *cand[MAX_CANDIDATES];
    int n = 0;
    const char *explicit = explicit_cache_dir(argc, argv);
    if (!explicit) explicit = env_nonempty("PACKER_CACHE");
    if (explicit) {
        cand[n++] = expand_user(explicit);
    } else {
        const char *xdg = env_nonempty("XDG_CACHE_HOME"), *home = home_dir();
        const char *runtime_dir = env_nonempty("XDG_RUNTIME_DIR");
        if (xdg) cand[n++] = join(xdg, "packer");
        if (home) cand[n++] = join(home, ".cache/packer");
        if (runtime_dir) cand[n++] = join(runtime_dir, "packer");
        if (asprintf(&cand[n++], "%s/packer-%u", temp_root(), (unsigned)getuid()) < 0)
            die("out of memory");
    }
    char tried[MAX_CANDIDATES * (PATH_MAX + 128)] = "";
    for (int i = 0; i < n; i++) {
        char why[256];
        const char *problem = cache_dir_problem(cand[i], why, sizeof why);
        if (!problem) return cand[i];
        size_t used = strlen(tried);
        snprintf(tried + used, sizeof tried - used, "%s%s %s", i ? "; " : "", cand[i], problem);
    }
    die("no usable cache folder (%s): %s", tried, CACHE_ADVICE);
}

/* ---- completion marker ------------------------------------------------------------------ */

/* The marker lists "size path" for every regular file and "- path" for every symlink; a runtime
 * folder is used only when it is a folder of ours that no one else can write, the marker (ours)
 * names this key and every listed file is there (ours: a regular file of that size, or a
 * symlink). */
static int runtime_complete(const char *dir, const char *key) {
    struct stat st;
    if (lstat(dir, &st) != 0 || not_ours(&st) || (st.st_mode & 022)) return 0;
    char *mpath = join(dir, MARKER);
    int mfd = open(mpath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(mpath);
    if (mfd < 0) return 0;
    FILE *f = fdopen(mfd, "r");
    if (!f) {
        close(mfd);
        return 0;
    }
    char line[PATH_MAX + 64];
    int ok = fstat(mfd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
             fgets(line, sizeof line, f) && strncmp(line, MARKER_HEAD, strlen(MARKER_HEAD)) == 0 &&
             strncmp(line + strlen(MARKER_HEAD), key, KEY_LEN) == 0;
    int files = 0;
    while (ok && fgets(line, sizeof line, f)) {
        char *sp = strchr(line, ' ');
        char *nl = strchr(line, '\n');
        if (!sp || !nl) {
            ok = 0;
            break;
        }
        *nl = 0;
        *sp = 0;
        char *p = join(dir, sp + 1);
        if (lstat(p, &st) != 0 || st.st_uid != geteuid()) {
            ok = 0;
        } else if (strcmp(line, "-") == 0) { /* a symlink */
            ok = S_ISLNK(st.st_mode);
        } else {
            char *end;
            unsigned long long want = strtoull(line, &end, 10);
            ok = *end == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == want;
        }
        free(p);
        files++;
    }
    if (ferror(f)) ok = 0;
    fclose(f);
    return ok && files > 0;
}

/* ---- archive reader --------------------------------------------------------------------- */

struct reader {
    int fd;
    uint64_t off, left; /* compressed bytes still to read */
    ZSTD_DStream *z;
    unsigned char in[1 << 17], out[1 << 17];
    ZSTD_inBuffer ib;
    size_t opos, olen;
    int frame_done, pending; /* pending: the last call filled `out`, more may be buffered */
    struct sha256 sha;       /* of the compressed bytes: the runtime key is its first 32 hex */
    const char *name;
};

static void corrupt(struct reader *r) {
    die("%s is corrupted (cannot unpack its runtime): copy the file again", r->name);
}

/* Fill r->out; returns bytes available (0 at the end of the archive). */
static size_t fill(struct reader *r) {
    while (r->opos == r->olen) {
        if (r->ib.pos == r->ib.size && !r->pending) {
            if (r->left == 0) return 0;
            size_t want = r->left < sizeof r->in ? (size_t)r->left : sizeof r->in;
            ssize_t got = pread(r->fd, r->in, want, (off_t)r->off);
            if (got <= 0) corrupt(r);
            sha256_update(&r->sha, r->in, (size_t)got);
            r->off += (uint64_t)got;
            r->left -= (uint64_t)got;
            r->ib.src = r->in;
            r->ib.size = (size_t)got;
            r->ib.pos = 0;
        }
        ZSTD_outBuffer ob = {r->out, sizeof r->out, 0};
        size_t rc = ZSTD_decompressStream(r->z, &ob, &r->ib);
        if (ZSTD_isError(rc)) corrupt(r);
        r->frame_done = rc == 0;
        r->pending = ob.pos == ob.size;
        r->opos = 0;
        r->olen = ob.pos;
    }
    return r->olen - r->opos;
}

static void rd(struct reader *r, void *dst, size_t n) {
    unsigned char *d = dst;
    while (n) {
        size_t avail = fill(r);
        if (!avail) corrupt(r);
        size_t k = avail < n ? avail : n;
        memcpy(d, r->out + r->opos, k);
        r->opos += k;
        d += k;
        n -= k;
    }
}

static int safe_relpath(const char *p) {
    if (!*p || p[0] == '/') return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
        if (n == strlen(MARKER) && strncmp(s, MARKER, n) == 0) return 0;
        s += n + (e != NULL);
    }
    return 1;
}

/* Every folder on the way from root to the entry rel is a real folder (not a symlink): an entry
 * is never written through a link, which could lead out of the tree. */
static int parents_are_folders(const char *root, const char *rel) {
    char path[PATH_MAX];
    for (const char *s = strchr(rel, '/'); s; s = strchr(s + 1, '/')) {
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%.*s", root, (int)(s - rel), rel) >= (int)sizeof path)
            return 0;
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
    }
    return 1;
}

/* The symlink rel (under root) with this target resolves inside root: the target is relative,
 * its ".." never climbs above root, and each folder it passes through is a real folder of the
 * tree (a symlink on the way could lead anywhere; a link as the last component is itself
 * checked). Called once the whole tree is unpacked. */
static int link_stays_inside(const char *root, const char *rel, const char *target) {
    if (target[0] == '/') return 0;
    char path[PATH_MAX]; /* the position reached, relative to root ("" = root) */
    const char *slash = strrchr(rel, '/');
    size_t len = slash ? (size_t)(slash - rel) : 0;
    memcpy(path, rel, len);
    path[len] = 0;
    for (const char *s = target; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        const char *next = s + n;
        while (*next == '/') next++;
        int last = *next == 0;
        if (n == 0 || (n == 1 && s[0] == '.')) {
            /* nothing */
        } else if (n == 2 && s[0] == '.' && s[1] == '.') {
            if (len == 0) return 0; /* above root */
            char *up = memrchr(path, '/', len);
            len = up ? (size_t)(up - path) : 0;
            path[len] = 0;
        } else {
            if (len + 1 + n >= sizeof path) return 0;
            if (len) path[len++] = '/';
            memcpy(path + len, s, n);
            len += n;
            path[len] = 0;
            if (!last) {
                char full[PATH_MAX];
                struct stat st;
                if (snprintf(full, sizeof full, "%s/%s", root, path) >= (int)sizeof full) return 0;
                if (lstat(full, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
            }
        }
        s = next;
    }
    return 1;
}

static void write_failed(const char *where, int err) {
    if (err == ENOSPC || err == EDQUOT)
        die("disk full while unpacking the runtime to %s: free some space or set PACKER_CACHE to "
            "another disk", where);
    die("cannot unpack the runtime to %s: %s", where, strerror(err));
}

/* Unpack the whole archive into tmp, check it against the key and write the marker there (the
 * last file written). */
static void unpack(int fd, const struct layout *l, const char *tmp, const char *name) {
    static struct reader r;
    memset(&r, 0, sizeof r);
    r.fd = fd;
    r.off = l->runtime_off;
    r.left = l->runtime_size;
    r.name = name;
    sha256_init(&r.sha);
    r.z = ZSTD_createDStream();
    if (!r.z) die("out of memory");
    ZSTD_DCtx_setParameter(r.z, ZSTD_d_windowLogMax, 27);

    char magic[8];
    rd(&r, magic, 8);
    if (memcmp(magic, ARCHIVE_MAGIC, 8) != 0) corrupt(&r);

    char *mpath = join(tmp, MARKER ".part");
    int mfd = open(mpath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    FILE *marker = mfd < 0 ? NULL : fdopen(mfd, "w");
    if (!marker) write_failed(tmp, errno);
    if (fprintf(marker, MARKER_HEAD "%s\n", l->key) < 0) write_failed(tmp, errno);

    char **links = NULL; /* the symlinks, checked once every entry is there */
    size_t nlinks = 0;
    size_t tmp_len = strlen(tmp);
    for (;;) {
        unsigned char h[ENTRY_HEAD];
        rd(&r, h, ENTRY_HEAD);
        char type = (char)h[0];
        /* no setuid, setgid or sticky bit, nothing writable by others */
        uint32_t mode = le32(h + 1) & 0755, plen = le32(h + 5);
        uint64_t size = le64(h + 9);
        if (type == 'e') break;
        char rel[PATH_MAX];
        if (plen == 0 || plen >= sizeof rel || tmp_len + 1 + (size_t)plen >= PATH_MAX) corrupt(&r);
        rd(&r, rel, plen);
        rel[plen] = 0;
        if (memchr(rel, 0, plen) || !safe_relpath(rel) || !parents_are_folders(tmp, rel))
            corrupt(&r);
        char *p = join(tmp, rel);
        if (type == 'd') {
            struct stat st;
            if (size != 0) corrupt(&r);
            if (mkdir(p, 0755) != 0 && errno != EEXIST) write_failed(tmp, errno);
            if (lstat(p, &st) != 0 || !S_ISDIR(st.st_mode)) corrupt(&r);
        } else if (type == 'l') {
            char target[PATH_MAX];
            if (size == 0 || size >= sizeof target) corrupt(&r);
            rd(&r, target, (size_t)size);
            target[size] = 0;
            if (target[0] == '/' || memchr(target, 0, (size_t)size)) corrupt(&r);
            if (symlink(target, p) != 0) write_failed(tmp, errno);
            char **grown = realloc(links, (nlinks + 1) * sizeof *links);
            if (!grown || !(grown[nlinks] = strdup(rel))) die("out of memory");
            links = grown;
            nlinks++;
            if (fprintf(marker, "- %s\n", rel) < 0) write_failed(tmp, errno);
        } else if (type == 'f') {
            int out = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode ? mode : 0644);
            if (out < 0) write_failed(tmp, errno);
            uint64_t left = size;
            while (left) {
                size_t avail = fill(&r);
                if (!avail) corrupt(&r);
                size_t k = avail < left ? avail : (size_t)left;
                for (size_t done = 0; done < k;) {
                    ssize_t w = write(out, r.out + r.opos + done, k - done);
                    if (w < 0) {
                        if (errno == EINTR) continue;
                        write_failed(tmp, errno);
                    }
                    done += (size_t)w;
                }
                r.opos += k;
                left -= k;
            }
            if (close(out) != 0) write_failed(tmp, errno);
            if (fprintf(marker, "%llu %s\n", (unsigned long long)size, rel) < 0)
                write_failed(tmp, errno);
        } else {
            corrupt(&r);
        }
        free(p);
    }
    /* the end entry must end the frame (the zstd checksum is verified at the frame's end) */
    if (fill(&r) != 0 || !r.frame_done || r.left != 0) corrupt(&r);
    ZSTD_freeDStream(r.z);
    char digest[65];
    sha256_hex(&r.sha, digest);
    if (memcmp(digest, l->key, KEY_LEN) != 0) corrupt(&r); /* not the archive the key names */
    for (size_t i = 0; i < nlinks; i++) {
        char *p = join(tmp, links[i]), target[PATH_MAX];
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n <= 0) corrupt(&r);
        target[n] = 0;
        if (!link_stays_inside(tmp, links[i], target)) corrupt(&r);
        free(p);
        free(links[i]);
    }
    free(links);

    if (fflush(marker) != 0 || ferror(marker) || fsync(fileno(marker)) != 0)
        write_failed(tmp, errno ? errno : EIO);
    if (fclose(marker) != 0) write_failed(tmp, errno);
    char *final_marker = join(tmp, MARKER);
    if (rename(mpath, final_marker) != 0) write_failed(tmp, errno);
    free(final_marker);
    free(mpath);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

static void rm_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Under the lock: remove leftovers of crashed unpacks of this key. */
static void remove_stale(const char *rtdir, const char *key) {
    DIR *d = opendir(rtdir);
    if (!d) return;
    char prefix[64];
    snprintf(prefix, sizeof prefix, ".tmp-%s-", key);
    char oprefix[64];
    snprintf(oprefix, sizeof oprefix, ".old-%s-", key);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 ||
            strncmp(e->d_name, oprefix, strlen(oprefix)) == 0) {
            char *p = join(rtdir, e->d_name);
            rm_tree(p);
            free(p);
        }
    }
    closedir(d);
}

/* ---- runtimes in use, old runtimes ------------------------------------------------------ */

static int inuse_fd = -1; /* <rtdir>/<key>.inuse, locked shared while this runtime is in use */

static void lock_inuse(int how) {
    if (inuse_fd < 0) return;
    while (flock(inuse_fd, how) != 0)
        if (errno != EINTR) return;
}

/* Hold a shared lock on <rtdir>/<key>.inuse until this process (after exec: the runtime) ends,
 * and mark the runtime as used now. Taken before the runtime is checked or unpacked, so a
 * pruner (which needs the exclusive lock) can never remove it under us. Best effort: without
 * the file the runtime still starts. */
static void hold_runtime(const char *rtdir, const char *key) {
    char *path;
    if (asprintf(&path, "%s/%s.inuse", rtdir, key) < 0) die("out of memory");
    inuse_fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600); /* no O_CLOEXEC: the runtime keeps it */
    free(path);
    if (inuse_fd < 0) return;
    lock_inuse(LOCK_SH);
    futimens(inuse_fd, NULL);
}

/* Turn our shared lock on the .inuse file into an exclusive one: 1 when no other process holds
 * the runtime (a launcher that is only checking it lets go within moments), 0 when one does. */
static int own_runtime_alone(void) {
    if (inuse_fd < 0) return 1;
    for (int i = 0; i < 40; i++) {
        if (flock(inuse_fd, LOCK_EX | LOCK_NB) == 0) return 1;
        if (errno != EWOULDBLOCK && errno != EINTR) return 1; /* no locks here: as before */
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return 0;
}

/* Remove the runtime folders in rtdir other than `keep` that no process holds and that were
 * last started more than KEEP_DAYS ago (the .inuse file's mtime; for folders unpacked by
 * launchers older than that file, the folder's own mtime). Errors only skip a folder. */
static void prune_runtimes(const char *rtdir, const char *keep) {
    DIR *d = opendir(rtdir);
    if (!d) return;
    time_t cutoff = time(NULL) - (time_t)KEEP_DAYS * 24 * 3600;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (strncmp(n, ".old-", 5) == 0 || strncmp(n, ".tmp-", 5) == 0) {
            /* leftovers of an interrupted unpack or removal, a day later (an unpack under way
             * is minutes old) */
            char *p = join(rtdir, n);
            struct stat st;
            if (lstat(p, &st) == 0 && st.st_mtime < time(NULL) - 24 * 3600) rm_tree(p);
            free(p);
            continue;
        }
        if (n[0] == '.' || strchr(n, '.') || strcmp(n, keep) == 0) continue; /* lock files */
        char *dir = join(rtdir, n), *inuse;
        struct stat st, ist;
        if (asprintf(&inuse, "%s.inuse", dir) < 0) die("out of memory");
        if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) goto next;
        time_t last = st.st_mtime;
        int had = stat(inuse, &ist) == 0;
        int lk = open(inuse, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (lk < 0) goto next;
        if (flock(lk, LOCK_EX | LOCK_NB) == 0) {
            if (had && ist.st_mtime > last) last = ist.st_mtime;
            if (!had) { /* keep the folder's age as its last use */
                struct timespec ts[2] = {{st.st_mtime, 0}, {st.st_mtime, 0}};
                futimens(lk, ts);
            }
            if (last < cutoff) {
                char *old;
                if (asprintf(&old, "%s/.old-%s-%d", rtdir, n, (int)getpid()) < 0)
                    die("out of memory");
                if (rename(dir, old) == 0) rm_tree(old);
                free(old);
            }
        }
        close(lk); /* releases the lock */
    next:
        free(inuse);
        free(dir);
    }
    closedir(d);
}

/* Make target a complete runtime. `redo`: replace it even if its marker says it is complete
 * (its executable could not be started: `why`). A runtime that another process is running from
 * is never replaced. Returns 1 when it unpacked one. */
static int ensure_runtime(int fd, const struct layout *l, const char *rtdir, const char *target,
                          const char *name, int redo, const char *why) {
    if (!redo && runtime_complete(target, l->key)) return 0; /* fast path: no lock */
    int unpacked = 0;
    char *lock_path;
    if (asprintf(&lock_path, "%s/%s.lock", rtdir, l->key) < 0) die("out of memory");
    int lk = open(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lk < 0) write_failed(rtdir, errno);
    lock_inuse(LOCK_UN); /* waiting is not using: let the one unpacking replace it */
    while (flock(lk, LOCK_EX) != 0)
        if (errno != EINTR) write_failed(rtdir, errno);
    lock_inuse(LOCK_SH);
    if (redo || !runtime_complete(target, l->key)) {
        remove_stale(rtdir, l->key);
        struct stat st;
        int exists = lstat(target, &st) == 0;
        if (exists && !own_runtime_alone()) {
            if (redo)
                die("cannot start the runtime %s: %s; other model.run processes are running "
                    "from it, so it was left as it is: stop them and run again", target, why);
            die("the runtime in %s is damaged, and other model.run processes are running from "
                "it: stop them and run again, or %s", target, CACHE_ADVICE);
        }
        if (exists) { /* damaged or half-deleted: move aside, then remove */
            char *old;
            if (asprintf(&old, "%s/.old-%s-%d", rtdir, l->key, (int)getpid()) < 0) die("out of memory");
            if (rename(target, old) != 0) write_failed(rtdir, errno);
            rm_tree(old);
            free(old);
        }
        char *tmp;
        if (asprintf(&tmp, "%s/.tmp-%s-XXXXXX", rtdir, l->key) < 0) die("out of memory");
        if (!mkdtemp(tmp)) write_failed(rtdir, errno);
        cleanup_dir = tmp;
        if (chmod(tmp, 0755) != 0) write_failed(tmp, errno);
        unpack(fd, l, tmp, name);
        if (rename(tmp, target) != 0) write_failed(rtdir, errno);
        cleanup_dir = NULL;
        free(tmp);
        unpacked = 1;
        lock_inuse(LOCK_SH); /* back to a shared hold, like every other user of it */
    }
    close(lk);
    free(lock_path);
    return unpacked;
}

/* ---- main ------------------------------------------------------------------------------- */

static int no_proc; /* /proc/self/exe is not there: this file was found from argv[0] */

static char *self_path(const char *argv0) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = 0;
        if (access(buf, R_OK) == 0) return strdup(buf);
    }
    no_proc = 1;
    if (argv0 && strchr(argv0, '/')) { /* no /proc: argv[0] is a path when run as ./model.run */
        char *r = realpath(argv0, NULL);
        if (r) return r;
    }
    die("cannot find this program's own file (is /proc mounted?): run it by its path");
}

int main(int argc, char **argv) {
    if (argc > 0 && argv[0] && *argv[0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    char *self = self_path(argc > 0 ? argv[0] : NULL);
    const char *slash = strrchr(self, '/');
    const char *name = slash ? slash + 1 : self;
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot read %s: %s", self, strerror(errno));
    struct layout l;
    read_layout(fd, name, &l);

    char *cache = resolve_cache_dir(argc, argv);
    char *rtdir = join(cache, "runtime");
    private_subdir(rtdir);
    char *target = join(rtdir, l.key);
    char *exe = join(target, RUNTIME_EXE);
    if (setenv("PACKER_BUNDLE", self, 1) != 0) die("out of memory");
    char *fallback_argv[] = {(char *)name, NULL};
    char **run_argv = argc > 0 ? argv : fallback_argv;
    if (no_proc) {
        /* The frozen runtime finds its own files from /proc/self/exe, else from argv[0]: give it
         * its own path, and the name it was started by for its messages. */
        if (setenv("PACKER_PROG", prog, 1) != 0) die("out of memory");
        run_argv[0] = exe;
    }
    int err = 0;
    hold_runtime(rtdir, l.key);
    for (int attempt = 0; attempt < 2; attempt++) { /* a runtime that cannot start is unpacked again */
        if (ensure_runtime(fd, &l, rtdir, target, name, attempt > 0, strerror(err)) && attempt == 0)
            prune_runtimes(rtdir, l.key); /* a new runtime version: collect unused old ones */
        execv(exe, run_argv);
        err = errno;
        if (err == E2BIG || err == ENOMEM) break;
    }
    die("cannot start the runtime %s: %s (delete %s and run again)", exe, strerror(err), target);
}
