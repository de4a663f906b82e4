// sessiond's kernel preload: a shared library the agent starts the Jupyter kernel process
// with (LD_PRELOAD, agent.Config.KernelPreload). Built by `make build` into
// bin/sessiond-kernel-preload.so; the sandbox runtimes mount it read-only into kernel
// sandboxes, and the kernel's launcher takes it out of the environment that user code and
// its child processes see.
//
// getpid without a system call. ZeroMQ checks for a fork with getpid() every time one of
// its threads signals another and every time a socket looks for commands (libzmq's
// signaler), about 22 calls in a Jupyter `1+1` whose other system calls number about 50.
// glibc makes each one a system call, and under gVisor a system call is a round trip
// through the sentry: answering these from memory took a runsc `1+1` through the agent
// from about 11 to 6-8 ms p50 (docs/BENCHMARKS.md).
//
// The value is the process's pid, read once when the library is loaded and again in the
// child of every fork() (pthread_atfork), as glibc itself did before 2.25. A child made
// with vfork() or clone() without fork()'s handlers shares or copies the parent's memory
// and would see the parent's pid until it execs; nothing in the kernel's stack calls
// getpid in that window. glibc's own internal uses do not come here.
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
