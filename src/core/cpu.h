/* Which instruction-set path the kernels take, detected once per process.
 *
 * Level CPU_AVX2 needs AVX2, FMA and F16C in CPUID and the OS saving YMM state
 * (OSXSAVE + XCR0 bits 1..2). The environment variable MOP_CPU=generic, read
 * at first use, forces the portable path; tests switch paths through
 * cpu_force_generic(). */
#ifndef MOP_CPU_H
#define MOP_CPU_H

typedef enum cpu_level {
    CPU_GENERIC = 0, /* baseline x86-64 / any target: plain C */
    CPU_AVX2 = 1     /* AVX2 + FMA + F16C, YMM state enabled by the OS */
} cpu_level;

/* Path the kernels use now: hardware level, lowered by MOP_CPU=generic or
 * cpu_force_generic(1). Thread-safe; after the first call an atomic load. */
cpu_level cpu_current(void);

/* What the hardware and OS support, ignoring any override. */
cpu_level cpu_detected(void);

/* Tests: on = 1 forces CPU_GENERIC, on = 0 returns to the detected level
 * (ignoring MOP_CPU), on = -1 re-reads MOP_CPU. Not meant for use while other
 * threads run kernels (they would see either path, both correct). */
void cpu_force_generic(int on);

/* "avx2" or "generic". */
const char *cpu_level_name(cpu_level level);

#endif
