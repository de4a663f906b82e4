// sessiond's kernel preload: a shared library the agent starts the Jupyter kernel process
// with (LD_PRELOAD, agent.Config.KernelPreload). Built by `make build` into
// bin/sessiond-kernel-preload.so; the sandbox runtimes mount it read-only into kernel
// sandboxes, and the kernel's launcher takes it out of the environment that user code and
// its child processes see.
//
// getpid without a system call. ZeroMQ checks for a fork with getpid() every time one of
// its threads signals another and every time a socket looks for commands (libzmq's
// signaler): 20-24 of the 62-81 system calls of a Jupyter `1+1` (strace). glibc makes each
// one a system call, and under gVisor a system call is a round trip through the sentry.
// With this library, `sessiond bench kernel` under runsc took 7.0-10.2 ms p50 against
// 8.7-12.7 without (four alternated runs each; docs/BENCHMARKS.md).
//
// The value is the process's pid, read once when the library is loaded and again in the
// child of every fork() (pthread_atfork), as glibc itself did before 2.25. A child made
// with vfork() or clone() without fork()'s handlers shares or copies the parent's memory
// and would see the parent's pid until it execs: CPython's subprocess (vfork) and glibc's
// posix_spawn and system (clone with CLONE_VFORK) make no getpid call in that window
// (strace). glibc's own internal uses do not come here.
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static pid_t pid;

static void renew(void) { __atomic_store_n(&pid, (pid_t)syscall(SYS_getpid), __ATOMIC_RELAXED); }

__attribute__((constructor)) static void init(void) {
	renew();
	pthread_atfork(NULL, NULL, renew);
}

pid_t getpid(void) {
	pid_t p = __atomic_load_n(&pid, __ATOMIC_RELAXED);
	if (p == 0) {  // called by a library's constructor that ran before init
		renew();
		p = __atomic_load_n(&pid, __ATOMIC_RELAXED);
	}
	return p;
}
