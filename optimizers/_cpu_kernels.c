/* NanoAdam's CPU kernels: the sparse AdamW step and the per-chunk selection, each one
 * OpenMP-parallel pass over the chunks of every tensor of a parameter group.
 *
 * Built on first use by optimizers/_cpu_kernels.py and called through ctypes with raw
 * pointers; the torch path in _nanoadam_functional.py / _selection.py is the reference these
 * kernels are tested against. Layout conventions (see _selection.py): tensor t of `numel[t]`
 * entries is cut into chunks of `chunk[t]` entries; every full chunk keeps `k[t]` entries, the
 * shorter last chunk (if any) keeps `k_rest[t]`; a group's selected entries are laid out tensor
 * after tensor, chunk after chunk, as offsets inside their chunk sorted increasingly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* Four int32 lanes (GCC/Clang vector extension: one SSE2 or NEON register). */
typedef int32_t v4si __attribute__((vector_size(16)));

/* One chunk of one tensor: the unit of parallel work. (A single unit runs on the calling
 * thread: fused backward updates tensors one at a time, many of them small, and waking the
 * OpenMP team would cost more than the work.) */
typedef struct {
    int64_t tensor;
    int64_t base;  /* index of the chunk's first entry inside its tensor */
    int64_t len;   /* entries in the chunk */
    int64_t first; /* position of its first selected entry in the group's flat arrays */
    int64_t count; /* entries it keeps */
} Chunk;

/* The chunks of all tensors, in order; NULL when out of memory. */
static Chunk *list_chunks(int64_t n_tensors, const int64_t *numel, const int64_t *chunk,
                          const int64_t *k, const int64_t *k_rest, int64_t *n_out) {
    int64_t n = 0;
    for (int64_t t = 0; t < n_tensors; t++)
        if (numel[t] > 0) n += (numel[t] + chunk[t] - 1) / chunk[t];
    Chunk *chunks = (Chunk *)malloc((size_t)(n > 0 ? n : 1) * sizeof(Chunk));
    if (!chunks) return NULL;
    int64_t i = 0, first = 0;
    for (int64_t t = 0; t < n_tensors; t++) {
        for (int64_t base = 0; base < numel[t]; base += chunk[t]) {
            int64_t len = numel[t] - base < chunk[t] ? numel[t] - base : chunk[t];
            int64_t count = len == chunk[t] ? k[t] : k_rest[t];
            chunks[i].tensor = t;
            chunks[i].base = base;
            chunks[i].len = len;
            chunks[i].first = first;
            chunks[i].count = count;
            first += count;
            i++;
        }
    }
    *n_out = n;
    return chunks;
}

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch converts float to bfloat16 (NaN stays a quiet NaN). */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline int64_t offset_at(const void *offsets, int offset_bytes, int64_t j) {
    if (offset_bytes == 2) return (int64_t)((const uint16_t *)offsets)[j];
    if (offset_bytes == 4) return (int64_t)((const uint32_t *)offsets)[j];
    return ((const int64_t *)offsets)[j];
}

#ifndef PREFETCH
#define PREFETCH 16 /* iterations ahead */
#endif

/* The selected gradient or parameter entries are scattered (about one in 100 at density 1%):
 * prefetching them a few iterations ahead keeps several cache misses in flight at once. */
static inline void prefetch_ahead(const float *base, const void *offsets, int offset_bytes,
                                  int64_t j, int64_t end, int write) {
    if (j + PREFETCH < end) {
        const float *at = base + offset_at(offsets, offset_bytes, j + PREFETCH);
        if (write)
            __builtin_prefetch(at, 1, 0);
        else
            __builtin_prefetch(at, 0, 0);
    }
}

/* First half of the sparse AdamW step, with torch's AdamW arithmetic in fp32:
 *   m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2
 * at the selected entries of every tensor of a group (`grads[t]`: addresses of fp32 flat
 * gradients). The moments are stored back in their dtype (fp32: `state_bf16` = 0, bfloat16:
 * 1) and, unrounded, into the fp32 arrays `m_out` and `v_out` (which may be the states
 * themselves when those are fp32). Returns 0, or 1 when out of memory (nothing was changed). */
int nanoadam_moments(int64_t n_tensors, const int64_t *grads, const int64_t *numel,
                     const int64_t *chunk, const int64_t *k, const int64_t *k_rest,
                     const void *offsets, int offset_bytes, void *exp_avg, void *exp_avg_sq,
                     int state_bf16, float *m_out, float *v_out, double beta1, double beta2) {
    int64_t n_chunks;
    Chunk *chunks = list_chunks(n_tensors, numel, chunk, k, k_rest, &n_chunks);
    if (!chunks) return 1;
    const float w1 = (float)(1.0 - beta1), b2 = (float)beta2, w2 = (float)(1.0 - beta2);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        const Chunk ch = chunks[c];
        const float *g = (const float *)(intptr_t)grads[ch.tensor] + ch.base;
        const int64_t end = ch.first + ch.count;
        for (int64_t j = ch.first; j < ch.first + PREFETCH && j < end; j++)
            __builtin_prefetch(g + offset_at(offsets, offset_bytes, j), 0, 0);
        for (int64_t j = ch.first; j < end; j++) {
            prefetch_ahead(g, offsets, offset_bytes, j, end, 0);
            const float gi = g[offset_at(offsets, offset_bytes, j)];
            float m, v;
            if (state_bf16) {
                m = bf16_to_float(((const uint16_t *)exp_avg)[j]);
                v = bf16_to_float(((const uint16_t *)exp_avg_sq)[j]);
            } else {
                m = ((const float *)exp_avg)[j];
                v = ((const float *)exp_avg_sq)[j];
            }
            /* torch's vectorised lerp: fma(w, end - start, start) for w < 0.5, else
             * fma(w - 1, end - start, end); its vectorised addcmul: fma(value g, g, v) */
            m = w1 < 0.5f ? fmaf(w1, gi - m, m) : fmaf(w1 - 1.0f, gi - m, gi);
            v = fmaf(w2 * gi, gi, v * b2);
            if (state_bf16) {
                ((uint16_t *)exp_avg)[j] = float_to_bf16(m);
                ((uint16_t *)exp_avg_sq)[j] = float_to_bf16(v);
            }
            m_out[j] = m;
            v_out[j] = v;
        }
    }
    free(chunks);
    return 0;
}

/* Second half: at the same entries, p = p (1 - lr wd) + (-step_size) m / (root / bc2 + eps),
 * with `m` and `root` = sqrt(v) given per selected entry (fp32; the square root is torch's, so
 * that results equal torch's AdamW bit for bit). `params[t]`: addresses of fp32 flat
 * parameters. Returns 0, or 1 when out of memory (nothing was changed). */
int nanoadam_apply(int64_t n_tensors, const int64_t *params, const int64_t *numel,
                   const int64_t *chunk, const int64_t *k, const int64_t *k_rest,
                   const void *offsets, int offset_bytes, const float *m, const float *root,
                   double lr, double eps, double weight_decay, double step_size,
                   double bc2_sqrt) {
    int64_t n_chunks;
    Chunk *chunks = list_chunks(n_tensors, numel, chunk, k, k_rest, &n_chunks);
    if (!chunks) return 1;
    const float decay = (float)(1.0 - lr * weight_decay), neg_step = (float)(-step_size);
    const float bc2 = (float)bc2_sqrt, epsf = (float)eps;
    const int decays = weight_decay != 0.0;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        const Chunk ch = chunks[c];
        float *p = (float *)(intptr_t)params[ch.tensor] + ch.base;
        const int64_t end = ch.first + ch.count;
        for (int64_t j = ch.first; j < ch.first + PREFETCH && j < end; j++)
            __builtin_prefetch(p + offset_at(offsets, offset_bytes, j), 1, 0);
        for (int64_t j = ch.first; j < end; j++) {
            prefetch_ahead(p, offsets, offset_bytes, j, end, 1);
            const int64_t i = offset_at(offsets, offset_bytes, j);
            /* torch: p.mul_(decay), then addcdiv: p + (value m) / denom */
            const float delta = (m[j] * neg_step) / (root[j] / bc2 + epsf);
            p[i] = decays ? p[i] * decay + delta : p[i] + delta;
        }
    }
    free(chunks);
    return 0;
}

/* |x| as an unsigned key whose order is the order of |x| (NaN above infinity); with `largest`,
 * reversed, so the kept entries are always those of smallest key. */
static inline uint32_t score_key(float x, int largest) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u &= 0x7fffffffu;
    return largest ? 0x7fffffffu - u : u;
}

#define BIN_SHIFT 19 /* 4096 bins over the 31-bit keys */
#define N_BINS (1 << (31 - BIN_SHIFT))

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static inline void store_offset(void *out, int offset_bytes, int64_t j, int64_t value) {
    if (offset_bytes == 2)
        ((uint16_t *)out)[j] = (uint16_t)value;
    else if (offset_bytes == 4)
        ((uint32_t *)out)[j] = (uint32_t)value;
    else
        ((int64_t *)out)[j] = value;
}

/* The r-th smallest (from 0) of a[0..n), by quickselect; reorders a. */
static uint64_t kth_smallest(uint64_t *a, int64_t n, int64_t r) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        /* median of three as the pivot */
        int64_t mid = lo + (hi - lo) / 2;
        uint64_t x = a[lo], y = a[mid], z = a[hi];
        uint64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                uint64_t t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (r <= j)
            hi = j;
        else if (r >= i)
            lo = i;
        else
            return a[r];
    }
    return a[r];
}

#define SAMPLE 1024  /* entries sampled per chunk to estimate the cut */
#define MARGIN 2.0   /* the estimated cut lets through about this many times the entries kept */

/* Whether a chunk is worth the sampled cut: long, and few of its entries kept. */
static inline int uses_sample(const Chunk *ch) {
    return ch->len >= 8 * SAMPLE && ch->count * 16 <= ch->len;
}

/* Per-thread scratch of the selection. */
typedef struct {
    uint64_t *cand, *work;
    int64_t *low;
    uint32_t *hist;
} Scratch;

/* Try the sampled cut on one chunk: the (MARGIN x count)-th smallest key of a strided sample
 * of SAMPLE entries, scaled to the chunk, as a threshold; one pass keeps the entries at or below
 * it as (key, index) candidates, in index order; the count-th smallest candidate then separates
 * the kept ones. Exact whenever it returns 1: every entry left out lies above the threshold,
 * hence above every candidate. Returns 0 (nothing written) when the sample misjudged the chunk:
 * fewer than `count` candidates, or far more than expected (ties). */
static int select_sampled(const float *x, const Chunk *ch, int largest, Scratch *sc, void *out,
                          int offset_bytes) {
    const int64_t len = ch->len, count = ch->count;
    const int64_t stride = len / SAMPLE, n_s = len / stride;
    int64_t rank = (int64_t)ceil(MARGIN * (double)count * (double)n_s / (double)len) + 3;
    if (rank > n_s - 1) rank = n_s - 1;
    /* the rank-th smallest sampled key: the rank + 1 smallest kept sorted in `best` (few
     * samples get in once it has filled) */
    uint64_t *best = sc->work;
    for (int64_t i = 0; i <= rank; i++) best[i] = UINT64_MAX;
    for (int64_t i = 0; i < n_s; i++) {
        const uint64_t key = score_key(x[i * stride], largest);
        if (key >= best[rank]) continue;
        int64_t at = rank;
        while (at > 0 && best[at - 1] > key) {
            best[at] = best[at - 1];
            at--;
        }
        best[at] = key;
    }
    const uint32_t cut = (uint32_t)best[rank];
    int64_t cap = 3 * (rank + 1) * len / n_s;
    if (cap < 8 * count) cap = 8 * count;
    /* Blocks of 16 entries: a vector test whether any is a candidate (most blocks hold none:
     * about one entry in 50 is), then a branch-free compaction of the blocks that do. |x| as
     * an integer is below 2^31, so signed comparisons order it; with `largest`, key <= cut
     * reads |x| >= 0x7fffffff - cut. */
    int64_t n = 0, i = 0;
    const int32_t edge = (int32_t)(largest ? 0x7fffffffu - cut : cut);
    const v4si magnitude = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const v4si bound = {edge, edge, edge, edge};
    for (; i + 16 <= len; i += 16) {
        v4si q[4], hit;
        /* 2 KB ahead, on top of the hardware prefetchers: 4% faster at density 1%, 12% at
         * 0.1% (chunks of 32768 entries read from memory) */
        if (i + 512 < len) __builtin_prefetch(x + i + 512, 0, 3);
        memcpy(q, x + i, sizeof q);
        for (int l = 0; l < 4; l++) q[l] &= magnitude;
        if (largest)
            hit = (q[0] >= bound) | (q[1] >= bound) | (q[2] >= bound) | (q[3] >= bound);
        else
            hit = (q[0] <= bound) | (q[1] <= bound) | (q[2] <= bound) | (q[3] <= bound);
        uint64_t lanes[2];
        memcpy(lanes, &hit, sizeof lanes);
        if (lanes[0] | lanes[1])
            for (int l = 0; l < 16; l++) {
                const uint32_t key = score_key(x[i + l], largest);
                sc->cand[n] = ((uint64_t)key << 32) | (uint64_t)(i + l);
                n += key <= cut;
            }
    }
    for (; i < len; i++) {
        const uint32_t key = score_key(x[i], largest);
        sc->cand[n] = ((uint64_t)key << 32) | (uint64_t)i;
        n += key <= cut;
    }
    if (n < count || n > cap) return 0;
    memcpy(sc->work, sc->cand, (size_t)n * sizeof(uint64_t));
    const uint64_t last = kth_smallest(sc->work, n, count - 1);
    int64_t j = ch->first;
    for (int64_t a = 0; a < n; a++)
        if (sc->cand[a] <= last) store_offset(out, offset_bytes, j++, (int64_t)(sc->cand[a] & 0xffffffffu));
    return 1;
}

/* The exact route for any chunk: a histogram of the keys' top bits finds the bin holding the
 * count-th smallest key; one more pass takes the entries of lower bins and the candidates of
 * that bin, of which a sort keeps the few needed; a merge writes them in index order. */
static void select_histogram(const float *x, const Chunk *ch, int largest, Scratch *sc,
                             void *out, int offset_bytes) {
    uint32_t *hist = sc->hist;
    memset(hist, 0, N_BINS * sizeof(uint32_t));
    for (int64_t i = 0; i < ch->len; i++) hist[score_key(x[i], largest) >> BIN_SHIFT]++;
    int64_t below = 0;
    uint32_t bin = 0;
    while (below + hist[bin] < ch->count) below += hist[bin++];
    int64_t n_low = 0, n_cand = 0;
    for (int64_t i = 0; i < ch->len; i++) {
        const uint32_t key = score_key(x[i], largest);
        const uint32_t b = key >> BIN_SHIFT;
        if (b < bin)
            sc->low[n_low++] = i;
        else if (b == bin)
            sc->cand[n_cand++] = ((uint64_t)key << 32) | (uint64_t)i;
    }
    const int64_t need = ch->count - n_low; /* 1 <= need <= n_cand */
    qsort(sc->cand, (size_t)n_cand, sizeof(uint64_t), cmp_u64);
    for (int64_t a = 0; a < need; a++) sc->cand[a] &= 0xffffffffu; /* back to index order */
    qsort(sc->cand, (size_t)need, sizeof(uint64_t), cmp_u64);
    int64_t a = 0, b = 0, j = ch->first;
    while (a < n_low || b < need) {
        if (b >= need || (a < n_low && sc->low[a] < (int64_t)sc->cand[b]))
            store_offset(out, offset_bytes, j++, sc->low[a++]);
        else
            store_offset(out, offset_bytes, j++, (int64_t)sc->cand[b++]);
    }
}

/* Keep, in every chunk, the `count` entries of smallest |x| (largest with `largest`), ties to
 * the lower index, and write their offsets sorted increasingly to `out`: the sampled cut where
 * few entries are kept of a long chunk, else (or when the sample misjudges the chunk) the
 * histogram route. Sources are fp32 (`sources[t]`: addresses); chunks hold fewer than 2^32
 * entries. Returns 0, or 1 when out of memory. */
int nanoadam_select(int64_t n_tensors, const int64_t *sources, const int64_t *numel,
                    const int64_t *chunk, const int64_t *k, const int64_t *k_rest, int largest,
                    void *out, int offset_bytes) {
    int64_t n_chunks;
    Chunk *chunks = list_chunks(n_tensors, numel, chunk, k, k_rest, &n_chunks);
    if (!chunks) return 1;
    int64_t longest = SAMPLE;
    for (int64_t c = 0; c < n_chunks; c++)
        if (chunks[c].len > longest) longest = chunks[c].len;
    int failed = 0;
#pragma omp parallel
    {
        Scratch sc;
        sc.hist = (uint32_t *)malloc(N_BINS * sizeof(uint32_t));
        sc.cand = (uint64_t *)malloc((size_t)longest * sizeof(uint64_t));
        sc.work = (uint64_t *)malloc((size_t)longest * sizeof(uint64_t));
        sc.low = (int64_t *)malloc((size_t)longest * sizeof(int64_t));
        if (!sc.hist || !sc.cand || !sc.work || !sc.low) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        if (!failed) {
#pragma omp for schedule(static)
            for (int64_t c = 0; c < n_chunks; c++) {
                const Chunk *ch = &chunks[c];
                const float *x = (const float *)(intptr_t)sources[ch->tensor] + ch->base;
                const int sampled = uses_sample(ch);
                if (c + 1 < n_chunks && uses_sample(&chunks[c + 1])) {
                    /* the next chunk's sample is scattered over its cache lines: start those
                     * loads now, while this chunk is read */
                    const Chunk *next = &chunks[c + 1];
                    const float *y = (const float *)(intptr_t)sources[next->tensor] + next->base;
                    const int64_t stride = next->len / SAMPLE;
                    for (int64_t i = 0; i < next->len / stride; i++)
                        __builtin_prefetch(y + i * stride, 0, 2);
                }
                if (!sampled || !select_sampled(x, ch, largest, &sc, out, offset_bytes))
                    select_histogram(x, ch, largest, &sc, out, offset_bytes);
            }
        }
        free(sc.hist);
        free(sc.cand);
        free(sc.work);
        free(sc.low);
    }
    free(chunks);
    return failed;
}

/* After a refresh that kept the layout (same tables), per chunk: the moments of every newly
 * selected entry, taken from the old selection where the entry was already selected, zero
 * where it is new (old and new offsets are sorted, so one merge per chunk matches them).
 * Moments are `state_bytes` (2 or 4) bytes each; `*_old` and `*_new` must not overlap.
 * Returns 0, or 1 when out of memory. */
int nanoadam_carry(int64_t n_tensors, const int64_t *numel, const int64_t *chunk,
                   const int64_t *k, const int64_t *k_rest, const void *old_offsets,
                   const void *new_offsets, int offset_bytes, const void *m_old,
                   const void *v_old, void *m_new, void *v_new, int state_bytes) {
    int64_t n_chunks;
    Chunk *chunks = list_chunks(n_tensors, numel, chunk, k, k_rest, &n_chunks);
    if (!chunks) return 1;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        const Chunk ch = chunks[c];
        int64_t a = ch.first;
        const int64_t a_end = ch.first + ch.count;
        for (int64_t j = ch.first; j < a_end; j++) {
            const int64_t want = offset_at(new_offsets, offset_bytes, j);
            while (a < a_end && offset_at(old_offsets, offset_bytes, a) < want) a++;
            /* where the entry is new, `a` points at no match: copy a zero instead */
            const int stays = a < a_end && offset_at(old_offsets, offset_bytes, a) == want;
            if (state_bytes == 2) {
                ((uint16_t *)m_new)[j] = stays ? ((const uint16_t *)m_old)[a] : 0;
                ((uint16_t *)v_new)[j] = stays ? ((const uint16_t *)v_old)[a] : 0;
            } else {
                ((uint32_t *)m_new)[j] = stays ? ((const uint32_t *)m_old)[a] : 0;
                ((uint32_t *)v_new)[j] = stays ? ((const uint32_t *)v_old)[a] : 0;
            }
        }
    }
    free(chunks);
    return 0;
}

/* Tracking of the entries ever selected: set bit `tensor_bits[t] + index` of `bits` (a bit
 * per entry, tensor t starting at bit `tensor_bits[t]`, a multiple of 8) for every selected
 * entry, and add to `counts[t]` the number of bits newly set in tensor t.
 * Returns 0, or 1 when out of memory. */
int nanoadam_mark(int64_t n_tensors, const int64_t *numel, const int64_t *chunk, const int64_t *k,
                  const int64_t *k_rest, const void *offsets, int offset_bytes,
                  const int64_t *tensor_bits, uint8_t *bits, int64_t *counts) {
    int64_t n_chunks;
    Chunk *chunks = list_chunks(n_tensors, numel, chunk, k, k_rest, &n_chunks);
    if (!chunks) return 1;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        const Chunk ch = chunks[c];
        const int64_t base = tensor_bits[ch.tensor] + ch.base;
        int64_t fresh = 0;
        for (int64_t j = ch.first; j < ch.first + ch.count; j++) {
            const int64_t bit = base + offset_at(offsets, offset_bytes, j);
            const uint8_t mask = (uint8_t)(1u << (bit & 7));
            /* atomic: neighbouring chunks may share a byte when the chunk length is not a
             * multiple of 8 */
            const uint8_t before = __atomic_fetch_or(bits + (bit >> 3), mask, __ATOMIC_RELAXED);
            fresh += (before & mask) == 0;
        }
#pragma omp atomic
        counts[ch.tensor] += fresh;
    }
    free(chunks);
    return 0;
}

#define DENSE_BLOCK 16384 /* entries per unit of parallel work in the dense step */

/* The blocks of DENSE_BLOCK entries of every tensor, as (tensor, start) pairs; NULL when out
 * of memory. */
static int64_t *dense_blocks(int64_t n_tensors, const int64_t *numel, int64_t *n_out) {
    int64_t n = 0;
    for (int64_t t = 0; t < n_tensors; t++) n += (numel[t] + DENSE_BLOCK - 1) / DENSE_BLOCK;
    int64_t *blocks = (int64_t *)malloc((size_t)(n > 0 ? 2 * n : 1) * sizeof(int64_t));
    if (!blocks) return NULL;
    int64_t b = 0;
    for (int64_t t = 0; t < n_tensors; t++)
        for (int64_t s = 0; s < numel[t]; s += DENSE_BLOCK) {
            blocks[2 * b] = t;
            blocks[2 * b + 1] = s;
            b++;
        }
    *n_out = n;
    return blocks;
}

/* AdamW over every entry of the tensors of a dense group, in two parallel passes over blocks of
 * all tensors (normalisation layers make for hundreds of small tensors, which torch's fused
 * kernel takes one call each), with the sparse step's arithmetic (torch's single-tensor
 * AdamW). First half: m and v of tensor t, fp32, live at `first[t]` in the flat `exp_avg` and
 * `exp_avg_sq`; `grads[t]`: addresses of fp32 gradients of `numel[t]` entries.
 * Returns 0, or 1 when out of memory (nothing was changed). */
int nanoadam_dense_moments(int64_t n_tensors, const int64_t *grads, const int64_t *numel,
                           const int64_t *first, float *exp_avg, float *exp_avg_sq,
                           double beta1, double beta2) {
    int64_t n_blocks;
    int64_t *blocks = dense_blocks(n_tensors, numel, &n_blocks);
    if (!blocks) return 1;
    const float w1 = (float)(1.0 - beta1), b2 = (float)beta2, w2 = (float)(1.0 - beta2);
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
    for (int64_t i = 0; i < n_blocks; i++) {
        const int64_t t = blocks[2 * i], s = blocks[2 * i + 1];
        const int64_t n = numel[t] - s < DENSE_BLOCK ? numel[t] - s : DENSE_BLOCK;
        const float *restrict g = (const float *)(intptr_t)grads[t] + s;
        float *restrict m = exp_avg + first[t] + s;
        float *restrict v = exp_avg_sq + first[t] + s;
        for (int64_t d = 0; d < n; d++) {
            const float gd = g[d], md = m[d];
            m[d] = w1 < 0.5f ? fmaf(w1, gd - md, md) : fmaf(w1 - 1.0f, gd - md, gd);
            v[d] = fmaf(w2 * gd, gd, v[d] * b2);
        }
    }
    free(blocks);
    return 0;
}

/* Second half: p = p (1 - lr wd) + (-step_size) m / (root / bc2 + eps), with `root` = sqrt(v)
 * (torch's) laid out like `exp_avg`; `params[t]`: addresses of fp32 parameters. */
int nanoadam_dense_apply(int64_t n_tensors, const int64_t *params, const int64_t *numel,
                         const int64_t *first, const float *exp_avg, const float *root,
                         double lr, double eps, double weight_decay, double step_size,
                         double bc2_sqrt) {
    int64_t n_blocks;
    int64_t *blocks = dense_blocks(n_tensors, numel, &n_blocks);
    if (!blocks) return 1;
    const float decay = (float)(1.0 - lr * weight_decay), neg_step = (float)(-step_size);
    const float bc2 = (float)bc2_sqrt, epsf = (float)eps;
    const int decays = weight_decay != 0.0;
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
    for (int64_t i = 0; i < n_blocks; i++) {
        const int64_t t = blocks[2 * i], s = blocks[2 * i + 1];
        const int64_t n = numel[t] - s < DENSE_BLOCK ? numel[t] - s : DENSE_BLOCK;
        float *restrict p = (float *)(intptr_t)params[t] + s;
        const float *restrict m = exp_avg + first[t] + s;
        const float *restrict r = root + first[t] + s;
        for (int64_t d = 0; d < n; d++) {
            const float pd = decays ? p[d] * decay : p[d];
            p[d] = pd + (m[d] * neg_step) / (r[d] / bc2 + epsf);
        }
    }
    free(blocks);
    return 0;
}
