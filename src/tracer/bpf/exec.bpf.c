// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * Failed execve/execveat of every process on the node, for archwatch's exec tracer.
 *
 * On sys_enter_execve(at) the filename pointer (and execveat's dirfd and flags) is kept per
 * thread; on sys_exit_execve(at) the entry is deleted and, only when the call failed with an
 * errno archwatch can explain, the path is read and one record is sent through a ring buffer.
 * A successful exec costs one map update and one map delete: no string is copied.
 *
 * Failures are rate-limited per cgroup (a token bucket per cgroup v2 id); what the limit or a
 * full ring buffer drops is counted in DROPS, which userspace exports.
 *
 * Self-contained on purpose: no kernel or libbpf headers, no CO-RE. Syscall tracepoint
 * contexts have a stable layout (see /sys/kernel/tracing/events/syscalls/<event>/format), so
 * the object needs no BTF from the running kernel.
 */

typedef unsigned char __u8;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
/* BTF-defined maps, as libbpf's bpf_helpers.h spells them. */
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

/* enum bpf_map_type, include/uapi/linux/bpf.h */
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_ANY 0

/* Helpers by their stable numbers (enum bpf_func_id, include/uapi/linux/bpf.h). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *src) = (void *)114;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;

/* asm-generic/errno-base.h and errno.h (the same on x86_64 and arm64). */
#define ENOENT 2
#define ENOEXEC 8
#define EACCES 13
#define ELOOP 40
#define ELIBBAD 80

#define AT_FDCWD -100
#define SYSCALL_EXECVE 0
#define SYSCALL_EXECVEAT 1

/* Bytes of path sent per event, NUL included; longer paths are cut and flagged. */
#define PATH_BUF 512
#define COMM_LEN 16

/* Dropped-event counters (index into DROPS). */
#define DROP_RATE_LIMITED 0
#define DROP_RING_FULL 1

/* Token bucket per cgroup; set by userspace before load (.rodata). */
const volatile __u32 rate_per_sec = 20;
const volatile __u32 burst = 50;

/* The tracepoint contexts: 8 bytes of common fields, the syscall number (an int, padded),
 * then the arguments (each 8 bytes wide) or the return value. */
struct sys_enter_ctx {
    __u64 common;
    __s32 nr;
    __s32 pad;
    __u64 args[6];
};

struct sys_exit_ctx {
    __u64 common;
    __s32 nr;
    __s32 pad;
    __s64 ret;
};

struct pending {
    __u64 filename;
    __s32 dirfd;
    __u32 flags;
    __u32 syscall;
    __u32 pad;
};

struct bucket {
    __u64 last_ns;
    /* In billionths of a token: refilled by rate_per_sec per nanosecond. */
    __u64 tokens;
};

/* The record read by src/tracer/record.rs: keep both in step (576 bytes, native endian). */
struct exec_event {
    __u64 cgroup_id;
    __u64 ktime_ns;
    __u32 pid;
    __u32 tgid;
    __s32 err;
    __s32 dirfd;
    __u32 flags;
    __u32 syscall;
    __s32 path_len;
    __u8 truncated;
    __u8 pad[3];
    __u8 comm[COMM_LEN];
    __u8 path[PATH_BUF];
};
_Static_assert(sizeof(struct exec_event) == 576, "record layout");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, struct pending);
} PENDING SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct bucket);
} BUCKETS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} DROPS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} EVENTS SEC(".maps");

static __always_inline void count_drop(__u32 which)
{
    __u64 *n = bpf_map_lookup_elem(&DROPS, &which);
    if (n)
        *n += 1;
}

/* One token per event. Updates from several CPUs may race; the bucket then lets through at
 * most one extra event per CPU, which is fine for a limit meant to bound a storm. */
static __always_inline int take_token(__u64 cgroup, __u64 now)
{
    const __u64 unit = 1000000000ULL;
    __u64 cap = (__u64)burst * unit;
    struct bucket *b = bpf_map_lookup_elem(&BUCKETS, &cgroup);
    if (!b) {
        struct bucket fresh = {.last_ns = now, .tokens = cap - unit};
        bpf_map_update_elem(&BUCKETS, &cgroup, &fresh, BPF_ANY);
        return 1;
    }
    __u64 elapsed = now - b->last_ns;
    /* Past a full refill more time adds nothing; the bound also keeps the product small. */
    __u64 full = rate_per_sec ? cap / rate_per_sec : 0;
    if (elapsed > full)
        elapsed = full;
    __u64 tokens = b->tokens + elapsed * rate_per_sec;
    if (tokens > cap)
        tokens = cap;
    b->last_ns = now;
    if (tokens < unit) {
        b->tokens = tokens;
        return 0;
    }
    b->tokens = tokens - unit;
    return 1;
}

static __always_inline int explained(__s64 ret)
{
    return ret == -ENOEXEC || ret == -ENOENT || ret == -EACCES || ret == -ELOOP ||
           ret == -ELIBBAD;
}

static __always_inline int on_enter(__u64 filename, __s32 dirfd, __u32 flags, __u32 syscall)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct pending p = {.filename = filename, .dirfd = dirfd, .flags = flags, .syscall = syscall};
    bpf_map_update_elem(&PENDING, &id, &p, BPF_ANY);
    return 0;
}

static __always_inline int on_exit(struct sys_exit_ctx *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __s64 ret = ctx->ret;
    if (!explained(ret)) {
        /* Success (or an errno nobody explains): forget the call, copy nothing. */
        bpf_map_delete_elem(&PENDING, &id);
        return 0;
    }
    struct pending *found = bpf_map_lookup_elem(&PENDING, &id);
    if (!found)
        return 0;
    struct pending p = *found;
    bpf_map_delete_elem(&PENDING, &id);

    __u64 cgroup = bpf_get_current_cgroup_id();
    __u64 now = bpf_ktime_get_ns();
    if (!take_token(cgroup, now)) {
        count_drop(DROP_RATE_LIMITED);
        return 0;
    }
    struct exec_event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
    if (!e) {
        count_drop(DROP_RING_FULL);
        return 0;
    }
    e->cgroup_id = cgroup;
    e->ktime_ns = now;
    e->pid = (__u32)id;
    e->tgid = (__u32)(id >> 32);
    e->err = (__s32)-ret;
    e->dirfd = p.dirfd;
    e->flags = p.flags;
    e->syscall = p.syscall;
    e->pad[0] = e->pad[1] = e->pad[2] = 0;
    bpf_get_current_comm(e->comm, COMM_LEN);
    long n = bpf_probe_read_user_str(e->path, PATH_BUF, (const void *)p.filename);
    e->path_len = (__s32)n;
    e->truncated = 0;
    if (n == PATH_BUF) {
        /* The buffer is full: the path was cut unless its NUL was the buffer's last byte. */
        __u8 next = 0;
        if (bpf_probe_read_user(&next, 1, (const void *)(p.filename + PATH_BUF - 1)) == 0 &&
            next != 0)
            e->truncated = 1;
    }
    bpf_ringbuf_submit(e, 0);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int enter_execve(struct sys_enter_ctx *ctx)
{
    return on_enter(ctx->args[0], AT_FDCWD, 0, SYSCALL_EXECVE);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int enter_execveat(struct sys_enter_ctx *ctx)
{
    return on_enter(ctx->args[1], (__s32)ctx->args[0], (__u32)ctx->args[4], SYSCALL_EXECVEAT);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exit_execve(struct sys_exit_ctx *ctx)
{
    return on_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int exit_execveat(struct sys_exit_ctx *ctx)
{
    return on_exit(ctx);
}

/* The helpers used (probe_read_user*) are GPL-only; the kernel checks this string. */
char LICENSE[] SEC("license") = "GPL";
