/* packer's decode loop: one sequence generated token after token without going back to Python
 * in between (#16 item 7).
 *
 * Between two llama_decode calls the runtime's Python picks the token and handles its text,
 * ~130-180 us a token, ~2 % of generation on a 2-core CPU (and more on a GPU, whose decodes are
 * shorter). Here a request runs decode -> pick -> decode ... in C for up to `seconds` (the pick:
 * an argmax, or the request's llama.cpp sampler chain), then returns the tokens it picked;
 * Python turns them into text (stop strings, UTF-8) and hands it over, once per run.
 *
 * Built by build/decode-loop.sh against the wheel's libllama, installed next to it as
 * libpacker-decode.so, bound by packer/runtime/decode_loop.py. Plain C99 for any x86-64 (SSE2
 * is in the base instruction set); other targets get the scalar loop. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */

#include <math.h>
#include <stdint.h>
#include <time.h>

#include "llama.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* what packer_decode_run returns: why it stopped */
enum {
    PACKER_DECODE_LIMIT = 0,  /* max_tokens picked */
    PACKER_DECODE_EOG = 1,    /* the last token picked ends generation (llama_vocab_is_eog) */
    PACKER_DECODE_STOP = 2,   /* *stop was set by another thread */
    PACKER_DECODE_TIME = 3,   /* `seconds` have passed */
    PACKER_DECODE_FAILED = 4, /* llama_decode failed (its code in *rc), or gave no logits */
};

/* bumped whenever the signature or the meaning of a result changes */
int32_t packer_decode_abi(void) { return 1; }

/* The index of the largest of x[0..n), the first of equals, NaN never picked (llama.cpp's
 * greedy sampler's choice); 0 when every value is NaN. */
int32_t packer_decode_argmax(const float *x, int32_t n) {
    float m = -INFINITY;
    int32_t i = 0;
#if defined(__SSE2__)
    /* maxps returns its second operand when either is NaN: NaNs leave the running maxima */
    __m128 a = _mm_set1_ps(-INFINITY), b = a, c = a, d = a;
    for (; i + 16 <= n; i += 16) {
        a = _mm_max_ps(_mm_loadu_ps(x + i), a);
        b = _mm_max_ps(_mm_loadu_ps(x + i + 4), b);
        c = _mm_max_ps(_mm_loadu_ps(x + i + 8), c);
        d = _mm_max_ps(_mm_loadu_ps(x + i + 12), d);
    }
    float lanes[4];
    _mm_storeu_ps(lanes, _mm_max_ps(_mm_max_ps(a, b), _mm_max_ps(c, d)));
    for (int k = 0; k < 4; k++)
        if (lanes[k] > m) m = lanes[k];
#endif
    for (; i < n; i++)
        if (x[i] > m) m = x[i];
    for (i = 0; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

static double elapsed(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

/* Decode `token` at position `pos` of sequence `seq`, pick the next token, and go on. The pick
 * is the largest logit when `sampler` is NULL, else llama_sampler_sample(sampler) (which also
 * accepts the token into the chain: penalties' history, the random generator's state).
 * Stops after max_tokens picks, at an end-of-generation token (unless ignore_eos), when *stop
 * is non-zero, or once `seconds` have passed (checked after each token). out[0..*n_out) are
 * the picked tokens: every one but the last was decoded (at pos + 1, pos + 2, ...) after
 * `token`; the last is for the caller to decode next (or the end-of-generation token). */
int32_t packer_decode_run(struct llama_context *ctx, const struct llama_vocab *vocab,
                          struct llama_sampler *sampler, llama_token token, llama_pos pos,
                          llama_seq_id seq, int32_t max_tokens, int32_t ignore_eos,
                          double seconds, const volatile int32_t *stop, llama_token *out,
                          int32_t *n_out, int32_t *rc) {
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    struct llama_batch batch = llama_batch_init(1, 0, 1);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int32_t n = 0, why = PACKER_DECODE_LIMIT;
    *rc = 0;
    while (n < max_tokens) {
        batch.n_tokens = 1;
        batch.token[0] = token;
        batch.pos[0] = pos++;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = seq;
        batch.logits[0] = 1;
        *rc = llama_decode(ctx, batch);
        const float *logits = *rc == 0 ? llama_get_logits_ith(ctx, 0) : NULL;
        if (logits == NULL) {
            why = PACKER_DECODE_FAILED;
            break;
        }
        token = sampler ? llama_sampler_sample(sampler, ctx, 0)
                        : packer_decode_argmax(logits, n_vocab);
        out[n++] = token;
        if (!ignore_eos && llama_vocab_is_eog(vocab, token)) {
            why = PACKER_DECODE_EOG;
            break;
        }
        if (n >= max_tokens) break;
        if (*stop) {
            why = PACKER_DECODE_STOP;
            break;
        }
        if (elapsed(&t0) >= seconds) {
            why = PACKER_DECODE_TIME;
            break;
        }
    }
    llama_batch_free(batch);
    *n_out = n;
    return why;
}
