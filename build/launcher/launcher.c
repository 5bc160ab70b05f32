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
 * passwd file's entry) | $TMPDIR/packer-UID.
 *
 * Safety: unpacking happens under an flock, into a temp folder next to the target, and the
 * folder is renamed into place only after its completion marker (a list of every file and its
 * size) is written; a folder whose marker is missing or does not match the files is replaced.
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
#include <time.h>
#include <sys/types.h>
#include <unistd.h>
#include <zstd.h>

#define TRAILER_SIZE 96
#define KEY_LEN 32
#define MARKER ".packer-complete"
#define MARKER_HEAD "packer-runtime 1 "
#define RUNTIME_EXE "packer-runtime"
#define ARCHIVE_MAGIC "PKRARCH1"
#define ENTRY_HEAD 17 /* type u8 | mode u32 | path_len u32 | size u64, little-endian */
#define KEEP_DAYS 30   /* an unused runtime folder is removed this long after its last start */

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
    int ok = l->runtime_off + l->runtime_size <= l->payload_off &&
             l->payload_off + l->payload_size <= l->manifest_off &&
             l->manifest_off + l->manifest_size == size - TRAILER_SIZE;
    for (int i = 0; i < KEY_LEN && ok; i++)
        ok = (l->key[i] >= '0' && l->key[i] <= '9') || (l->key[i] >= 'a' && l->key[i] <= 'f');
    if (!ok) die("%s has an inconsistent layout: the file is corrupted; copy it again", name);
    if (l->runtime_size == 0)
        die("%s has no runtime attached: rebuild it with packer build", name);
}

/* ---- cache folder ----------------------------------------------------------------------- */

static int mkdirs(const char *path) {
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
    struct stat st;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int usable(const char *dir) {
    return mkdirs(dir) == 0 && access(dir, W_OK | X_OK) == 0;
}

static char *join(const char *a, const char *b) {
    char *out;
    if (asprintf(&out, "%s/%s", a, b) < 0) die("out of memory");
    return out;
}

static char *expand_user(const char *p) {
    const char *home = getenv("HOME");
    if (p[0] == '~' && (p[1] == '/' || p[1] == 0) && home && *home) return join(home, p + 1 + (p[1] == '/'));
    return strdup(p);
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
    fclose(f);
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

/* The rules of resolve_cache_dir() in packer/runtime/cache.py, repeated in C. */
static char *resolve_cache_dir(int argc, char **argv) {
    char *cand[3];
    int n = 0;
    const char *explicit = explicit_cache_dir(argc, argv);
    if (!explicit) explicit = env_nonempty("PACKER_CACHE");
    if (explicit) {
        cand[n++] = expand_user(explicit);
    } else {
        const char *xdg = env_nonempty("XDG_CACHE_HOME"), *home = home_dir();
        if (xdg) cand[n++] = join(xdg, "packer");
        if (home) cand[n++] = join(home, ".cache/packer");
        if (asprintf(&cand[n++], "%s/packer-%u", temp_root(), (unsigned)getuid()) < 0)
            die("out of memory");
    }
    for (int i = 0; i < n; i++)
        if (usable(cand[i])) return cand[i];
    char tried[3 * PATH_MAX] = "";
    for (int i = 0; i < n; i++) {
        if (i) strncat(tried, ", ", sizeof tried - strlen(tried) - 1);
        strncat(tried, cand[i], sizeof tried - strlen(tried) - 1);
    }
    die("no writable cache folder (tried %s): set PACKER_CACHE=/some/writable/dir or pass "
        "--cache-dir", tried);
}

/* ---- completion marker ------------------------------------------------------------------ */

/* The marker lists "size path" for every regular file and "- path" for every symlink; a runtime
 * folder is used only when the marker names this key and every listed file is there (a regular
 * file of that size, or a symlink). */
static int runtime_complete(const char *dir, const char *key) {
    char *mpath = join(dir, MARKER);
    FILE *f = fopen(mpath, "re");
    free(mpath);
    if (!f) return 0;
    char line[PATH_MAX + 64];
    int ok = fgets(line, sizeof line, f) && strncmp(line, MARKER_HEAD, strlen(MARKER_HEAD)) == 0 &&
             strncmp(line + strlen(MARKER_HEAD), key, KEY_LEN) == 0;
    int files = 0;
    while (ok && fgets(line, sizeof line, f)) {
        char *sp = strchr(line, ' ');
        char *nl = strchr(line, '\n');
        if (!sp || !nl) { ok = 0; break; }
        *nl = 0;
        *sp = 0;
        char *p = join(dir, sp + 1);
        struct stat st;
        if (strcmp(line, "-") == 0) { /* a symlink */
            ok = lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
        } else {
            char *end;
            unsigned long long want = strtoull(line, &end, 10);
            ok = *end == 0 && lstat(p, &st) == 0 && S_ISREG(st.st_mode) &&
                 (uint64_t)st.st_size == want;
        }
        free(p);
        files++;
    }
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

static void write_failed(const char *where, int err) {
    if (err == ENOSPC || err == EDQUOT)
        die("disk full while unpacking the runtime to %s: free some space or set PACKER_CACHE to "
            "another disk", where);
    die("cannot unpack the runtime to %s: %s", where, strerror(err));
}

/* Unpack the whole archive into tmp and write the marker there (the last file written). */
static void unpack(int fd, const struct layout *l, const char *tmp, const char *name) {
    static struct reader r;
    memset(&r, 0, sizeof r);
    r.fd = fd;
    r.off = l->runtime_off;
    r.left = l->runtime_size;
    r.name = name;
    r.z = ZSTD_createDStream();
    if (!r.z) die("out of memory");
    ZSTD_DCtx_setParameter(r.z, ZSTD_d_windowLogMax, 27);

    char magic[8];
    rd(&r, magic, 8);
    if (memcmp(magic, ARCHIVE_MAGIC, 8) != 0) corrupt(&r);

    char *mpath = join(tmp, MARKER ".part");
    FILE *marker = fopen(mpath, "we");
    if (!marker) write_failed(tmp, errno);
    fprintf(marker, MARKER_HEAD "%s\n", l->key);

    for (;;) {
        unsigned char h[ENTRY_HEAD];
        rd(&r, h, ENTRY_HEAD);
        char type = (char)h[0];
        uint32_t mode = le32(h + 1) & 07777, plen = le32(h + 5);
        uint64_t size = le64(h + 9);
        if (type == 'e') break;
        if (plen == 0 || plen >= PATH_MAX - strlen(tmp) - 2) corrupt(&r);
        char rel[PATH_MAX];
        rd(&r, rel, plen);
        rel[plen] = 0;
        if (memchr(rel, 0, plen) || !safe_relpath(rel)) corrupt(&r);
        char *p = join(tmp, rel);
        if (type == 'd') {
            if (size != 0) corrupt(&r);
            if (mkdir(p, 0755) != 0 && errno != EEXIST) write_failed(tmp, errno);
        } else if (type == 'l') {
            char target[PATH_MAX];
            if (size == 0 || size >= sizeof target) corrupt(&r);
            rd(&r, target, (size_t)size);
            target[size] = 0;
            if (target[0] == '/' || memchr(target, 0, (size_t)size)) corrupt(&r);
            if (symlink(target, p) != 0) write_failed(tmp, errno);
            fprintf(marker, "- %s\n", rel);
        } else if (type == 'f') {
            int out = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode ? mode : 0644);
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
            fprintf(marker, "%llu %s\n", (unsigned long long)size, rel);
        } else {
            corrupt(&r);
        }
        free(p);
    }
    /* the end entry must end the frame (the zstd checksum is verified at the frame's end) */
    if (fill(&r) != 0 || !r.frame_done || r.left != 0) corrupt(&r);
    ZSTD_freeDStream(r.z);

    if (fflush(marker) != 0 || fsync(fileno(marker)) != 0) write_failed(tmp, errno);
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

/* Hold a shared lock on <rtdir>/<key>.inuse until this process (after exec: the runtime) ends,
 * and mark the runtime as used now. Taken before the runtime is checked or unpacked, so a
 * pruner (which needs the exclusive lock) can never remove it under us. Best effort: without
 * the file the runtime still starts. */
static void hold_runtime(const char *rtdir, const char *key) {
    char *path;
    if (asprintf(&path, "%s/%s.inuse", rtdir, key) < 0) die("out of memory");
    int fd = open(path, O_RDWR | O_CREAT, 0600); /* no O_CLOEXEC: the runtime keeps it */
    free(path);
    if (fd < 0) return;
    while (flock(fd, LOCK_SH) != 0)
        if (errno != EINTR) return;
    futimens(fd, NULL);
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
        int lk = open(inuse, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
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
 * (its executable could not be started). Returns 1 when it unpacked one. */
static int ensure_runtime(int fd, const struct layout *l, const char *rtdir, const char *target,
                          const char *name, int redo) {
    if (!redo && runtime_complete(target, l->key)) return 0; /* fast path: no lock */
    int unpacked = 0;
    char *lock_path;
    if (asprintf(&lock_path, "%s/%s.lock", rtdir, l->key) < 0) die("out of memory");
    int lk = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lk < 0) write_failed(rtdir, errno);
    while (flock(lk, LOCK_EX) != 0)
        if (errno != EINTR) write_failed(rtdir, errno);
    if (redo || !runtime_complete(target, l->key)) {
        remove_stale(rtdir, l->key);
        struct stat st;
        if (lstat(target, &st) == 0) { /* damaged or half-deleted: move aside, then remove */
            char *old;
            if (asprintf(&old, "%s/.old-%s-%d", rtdir, l->key, (int)getpid()) < 0) die("out of memory");
            if (rename(target, old) != 0) write_failed(rtdir, errno);
            rm_tree(old);
            free(old);
        }
        char *tmp;
        if (asprintf(&tmp, "%s/.tmp-%s-XXXXXX", rtdir, l->key) < 0) die("out of memory");
        if (!mkdtemp(tmp)) write_failed(rtdir, errno);
        chmod(tmp, 0755);
        cleanup_dir = tmp;
        unpack(fd, l, tmp, name);
        if (rename(tmp, target) != 0) write_failed(rtdir, errno);
        cleanup_dir = NULL;
        free(tmp);
        unpacked = 1;
    }
    close(lk);
    free(lock_path);
    return unpacked;
}

/* ---- main ------------------------------------------------------------------------------- */

static char *self_path(const char *argv0) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = 0;
        if (access(buf, R_OK) == 0) return strdup(buf);
    }
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
    if (mkdirs(rtdir) != 0) write_failed(rtdir, errno);
    char *target = join(rtdir, l.key);
    char *exe = join(target, RUNTIME_EXE);
    if (setenv("PACKER_BUNDLE", self, 1) != 0) die("out of memory");
    char *fallback_argv[] = {(char *)name, NULL};
    int err = 0;
    hold_runtime(rtdir, l.key);
    for (int attempt = 0; attempt < 2; attempt++) { /* a runtime that cannot start is unpacked again */
        if (ensure_runtime(fd, &l, rtdir, target, name, attempt > 0) && attempt == 0)
            prune_runtimes(rtdir, l.key); /* a new runtime version: collect unused old ones */
        execv(exe, argc > 0 ? argv : fallback_argv);
        err = errno;
        if (err == E2BIG || err == ENOMEM) break;
    }
    die("cannot start the runtime %s: %s (delete %s and run again)", exe, strerror(err), target);
}
