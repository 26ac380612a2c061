/* Runtime CPU feature detection for kernel dispatch. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define CPU_X86 1
#endif

#include "cpu.h"

/* -1 = not yet detected; otherwise a cpu_level. */
static atomic_int detected_level = -1;
static atomic_int current_level = -1;

#ifdef CPU_X86
/* XCR0: which register states the OS saves on context switch. */
static unsigned long long cpu_xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static int cpu_os_saves_ymm(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & bit_OSXSAVE))
        return 0;
    return (cpu_xgetbv0() & 0x6) == 0x6; /* XMM (bit 1) and YMM (bit 2) */
}
#endif

cpu_level cpu_detected(void)
{
    int lvl = atomic_load_explicit(&detected_level, memory_order_acquire);
    if (lvl >= 0)
        return (cpu_level)lvl;
    lvl = CPU_GENERIC;
#ifdef CPU_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_os_saves_ymm()) {
        unsigned int a, b, c, d;
        if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_POPCNT))
            lvl = CPU_AVX2;
    }
#endif
    /* Every thread computes the same answer, so a race here is harmless. */
    atomic_store_explicit(&detected_level, lvl, memory_order_release);
    return (cpu_level)lvl;
}

static int cpu_env_wants_generic(void)
{
    const char *e = getenv("MOP_CPU");
    return e && strcmp(e, "generic") == 0;
}

cpu_level cpu_current(void)
{
    int lvl = atomic_load_explicit(&current_level, memory_order_acquire);
    if (lvl >= 0)
        return (cpu_level)lvl;
    lvl = cpu_env_wants_generic() ? CPU_GENERIC : cpu_detected();
    atomic_store_explicit(&current_level, lvl, memory_order_release);
    return (cpu_level)lvl;
}

void cpu_force_generic(int on)
{
    int lvl;
    if (on > 0)
        lvl = CPU_GENERIC;
    else if (on == 0)
        lvl = cpu_detected();
    else
        lvl = cpu_env_wants_generic() ? CPU_GENERIC : cpu_detected();
    atomic_store_explicit(&current_level, lvl, memory_order_release);
}

const char *cpu_level_name(cpu_level level)
{
    return level == CPU_AVX2 ? "avx2" : "generic";
}
