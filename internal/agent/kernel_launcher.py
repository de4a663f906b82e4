# sessiond's launcher for the python3 kernel: ipykernel as `python3 -m ipykernel_launcher`
# starts it, with the costs below cut. The agent passes this file's text to `python3 -c`.
#
# - sys.path: the working directory leaves sys.path first, so a user's file cannot shadow
#   a module the kernel imports.
# - debugpy and jedi: ipykernel imports the debugger (pydevd, ~0.2 CPU-seconds) and
#   IPython's completer imports jedi (~0.1 CPU-seconds) when they can. Nothing reaches
#   either here (the API has no debug or completion requests; IPython completes without
#   jedi), so their imports are made to fail while ipykernel loads; user code can import
#   both afterwards.
# - IOPub thread hops (ipykernel 6): every iopub message the main thread publishes (status,
#   execute_input, results, streams) is handed to the IOPub thread through a ZeroMQ pipe,
#   and every stdout/stderr flush waits for a round trip through that thread. Each hop is a
#   cross-thread wake-up, cheap natively but about a millisecond or more under gVisor, and
#   an execution makes a dozen of them. Here the main thread sends its own messages
#   directly; a lock serialises every use of the iopub socket between it and the IOPub
#   thread (which still sends for other threads and flushes on its timer), and the order
#   of one thread's messages is unchanged. An interrupt (SIGINT) that arrives during such
#   a send is held until the send is complete. Forked children and other ipykernel
#   versions keep ipykernel's own behaviour.
# - The control-queue flush (ipykernel 6): before each shell request the main thread wakes
#   the control thread, which wakes it back with a future that dispatch_shell returns
#   without awaiting (`await self._flush_control_queue()` awaits the coroutine, not the
#   future), so the shell never waited for it: two thread wake-ups for nothing. Here the
#   future comes back already done, and control requests are handled on the control
#   thread as they arrive, as before.
# - ipykernel sleeps 0.5 ms after each execution (Kernel._execute_sleep) against streams
#   that did not make it out; the agent passes --IPythonKernel._execute_sleep=0, since a
#   flush here sends before it returns.
import asyncio
import signal
import sys
import threading

if sys.path and sys.path[0] == "":
    del sys.path[0]
_blocked = ("debugpy", "jedi")
for _m in _blocked:
    sys.modules[_m] = None
import ipykernel
from ipykernel import iostream, kernelapp, kernelbase

for _m in _blocked:
    del sys.modules[_m]


def _direct_iopub():
    pub, out = iostream.IOPubThread, iostream.OutStream
    needed = ((pub, "_really_send"), (pub, "send_multipart"), (pub, "_handle_event"),
              (pub, "_is_master_process"), (out, "_flush"), (out, "flush"))
    if not ipykernel.__version__.startswith("6.") or not all(hasattr(c, n) for c, n in needed):
        return
    lock = threading.RLock()  # every send on the iopub socket and every stream flush

    def master(io):
        return io is not None and io._is_master_process()

    def on_main():
        return threading.current_thread() is threading.main_thread()

    def uninterrupted(fn):
        # Runs fn on the main thread under the lock with SIGINT deferred until it returns.
        # An interrupt is a KeyboardInterrupt raised between two bytecodes: in the middle
        # of a multipart send it would leave part of a message on the socket and garble
        # every later one; in a flush, it would drop the text taken from the buffer.
        old = signal.getsignal(signal.SIGINT)
        if old is None:  # a handler not installed from Python: leave it alone
            with lock:
                return fn()
        hits = []
        signal.signal(signal.SIGINT, lambda signum, frame: hits.append(frame))
        try:
            with lock:
                fn()
        finally:
            signal.signal(signal.SIGINT, old)
        if hits and callable(old):
            old(signal.SIGINT, hits[0])  # default_int_handler raises KeyboardInterrupt

    handle_event = pub._handle_event

    def _handle_event(self, msg):
        with lock:
            handle_event(self, msg)

    def send_multipart(self, *args, **kwargs):
        if not master(self):
            self.schedule(lambda: self._really_send(*args, **kwargs))
        elif on_main():
            uninterrupted(lambda: self._really_send(*args, **kwargs))
        elif threading.current_thread() is self.thread:
            with lock:
                self._really_send(*args, **kwargs)
        else:
            self.schedule(lambda: self._really_send(*args, **kwargs))

    # A flush takes the buffered text and sends it under the lock, so two flushes (the
    # IOPub thread's timer and the main thread's) cannot overtake each other.
    flush_now, flush = out._flush, out.flush

    def _flush(self):
        if not master(self.pub_thread):
            flush_now(self)  # a forked child: ipykernel pipes it to the parent
        elif on_main():
            uninterrupted(lambda: flush_now(self))
        else:
            with lock:
                flush_now(self)

    def _out_flush(self):
        if master(self.pub_thread) and on_main():
            self._flush()
        else:
            flush(self)

    pub._handle_event, pub.send_multipart = _handle_event, send_multipart
    out._flush, out.flush = _flush, _out_flush


def _no_control_flush():
    kb = kernelbase.Kernel
    if not ipykernel.__version__.startswith("6.") or not hasattr(kb, "_flush_control_queue"):
        return

    async def _flush_control_queue(self):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    kb._flush_control_queue = _flush_control_queue


_direct_iopub()
_no_control_flush()
kernelapp.launch_new_instance()
