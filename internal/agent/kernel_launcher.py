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
# - IPython's terminal: `import IPython` imports IPython.terminal.embed for IPython.embed,
#   and with it the terminal shell, prompt_toolkit and pygments' terminal support (~140
#   modules, ~0.1 CPU-seconds of every kernel start), none of which a kernel uses. That
#   module is a stand-in here until something uses it; then the real one is imported.
# - The cyclic garbage collector runs dozens of times while the kernel's modules load and
#   finds nothing to free; it is off until the kernel has started, and what the start
#   created is then frozen out of later collections (gc.freeze).
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
# - System calls: under gVisor a system call made now and then (not in a tight loop) costs
#   about 0.1 ms, and a stock `1+1` made about 35 getpid calls (ipykernel's fork checks on
#   every send and flush, jupyter_client's message ids), 22 sigaction calls (ipykernel swaps
#   the SIGINT handler around each request; the held interrupts below swapped it around
#   each send) and about six ZeroMQ getsockopt calls (tornado's ZMQStream re-reading a
#   socket's events around each queued send). Here os.getpid answers from a value renewed
#   in every child forked from Python (os.register_at_fork), SIGINT goes to one handler
#   installed once, which holds it or passes it on to the handler ipykernel would have
#   installed (user code sees that handler from signal.getsignal during an execution,
#   where ipykernel's shows default_int_handler), and the main thread sends a shell reply
#   itself when nothing is queued before it instead of queueing it for the next turn of
#   the event loop; the reply then leaves before the idle status instead of after it (the
#   protocol allows both; the agent waits for both).
# - Broadcasts nobody reads (ipykernel 6): the kernel's only client is the agent, which reads
#   results, streams, errors, the reply and the idle status. The re-broadcast of each
#   request's code (execute_input) and the busy status are not sent: under gVisor each
#   message costs a wake-up of ZeroMQ's I/O thread and of the agent, and these two were
#   two of the five messages of a `1+1` (measured: 17-19 ms against 9-11 ms p50 under runsc).
# - The agent's result expression (a user expression: resultExpr in kernel_result.go) is a
#   str, and IPython formats a user expression's value with every display formatter (a
#   dozen, each through a signature-binding decorator: about 0.6 ms of CPU for a short
#   str, more than the `1+1` itself). The agent reads only its text/plain, which for a
#   str is its repr, so a str value gets just that. Only the agent sends user expressions.
# - Display formatters: IPython wraps each formatter's __call__ in catch_format_error through
#   the decorator package, whose wrapper re-binds every call's arguments to the method's
#   signature (inspect.Signature.bind) before calling catch_format_error: a dozen times
#   per displayed value, half the cost of formatting a `2` (226 against 107 us natively).
#   Here __call__ calls catch_format_error with the same arguments directly; calls the
#   direct path cannot bind the same way go through the decorator's wrapper as before.
# - Message dates: jupyter_client parses the date in each incoming message's header with
#   dateutil's general-purpose parser (78 us natively, once per execution; about 300 of
#   the 3700 Python function calls of a `1+1`). Here a date that matches jupyter_client's
#   own ISO 8601 pattern is parsed by datetime.fromisoformat (about 1 us), which reads
#   every string of that pattern to the same instant and offset; a string it refuses
#   still goes to dateutil, as before.
# - The kernel's log: IPKernelApp's logger is at DEBUG and its one handler (stderr) at
#   WARNING, so each request made four log records that the handler then dropped. Here the
#   logger's level is raised to its handlers' lowest, which drops the same records before
#   they are made; what reaches stderr is unchanged.
# - The formatters' lazy state: the display formatters build their trait defaults, type
#   tables and configuration lookups on their first use, about 2 ms of Python that fell in
#   a session's first execution with a result. Here one value is formatted at start, while
#   the sandbox warms up.
# - The agent's preload library (LD_PRELOAD; see preload/kernel_preload.c) answers ZeroMQ's
#   getpid calls without a system call. It is for this process only: it leaves the
#   environment first thing, so user code and the processes it starts do not see it.
import asyncio
import functools
import gc
import importlib
import inspect
import logging
import os
import signal
import sys
import threading
import types
from datetime import datetime


def _drop_preload():
    ours = os.environ.pop("SESSIOND_KERNEL_PRELOAD", "")
    value = os.environ.get("LD_PRELOAD", "")
    if not ours or not value.startswith(ours):
        return
    rest = value[len(ours):]
    if rest == "":
        del os.environ["LD_PRELOAD"]
    elif rest.startswith(":"):
        os.environ["LD_PRELOAD"] = rest[1:]


def _cached_getpid():
    real = os.getpid
    pid = [real()]

    def getpid():
        return pid[0]

    def renew():
        pid[0] = real()

    os.register_at_fork(after_in_child=renew)
    getpid.__module__, getpid.__qualname__, getpid.__doc__ = "os", "getpid", real.__doc__
    os.getpid = getpid


def _lazy_terminal_embed():
    name = "IPython.terminal.embed"
    stand_in = types.ModuleType(name, "IPython.terminal.embed, imported on first use")

    def real():
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
            try:
                module = importlib.import_module(name)
            except BaseException:
                sys.modules[name] = stand_in
                raise
            stand_in.__dict__.update((k, v) for k, v in vars(module).items() if k != "__name__")
        return sys.modules[name]

    def embed(*args, **kwargs):
        return real().embed(*args, **kwargs)

    def __getattr__(attr):
        if attr.startswith("__"):  # the import system probing (__path__, __spec__...)
            raise AttributeError(attr)
        return getattr(real(), attr)

    stand_in.embed, stand_in.__getattr__ = embed, __getattr__
    sys.modules[name] = stand_in


_drop_preload()
gc.disable()
if sys.path and sys.path[0] == "":
    del sys.path[0]
_cached_getpid()
_lazy_terminal_embed()
_blocked = ("debugpy", "jedi")
for _m in _blocked:
    sys.modules[_m] = None
import ipykernel
from ipykernel import iostream, kernelapp, kernelbase
from IPython.core import formatters, interactiveshell

for _m in _blocked:
    del sys.modules[_m]


def _ipykernel6(obj, *names):
    """Whether this is ipykernel 6 and obj has every attribute named: the changes below rely
    on its internals, and leave any other version as it is."""
    return ipykernel.__version__.startswith("6.") and all(hasattr(obj, n) for n in names)


class _Interrupts:
    """SIGINT on the kernel's main thread: one Python handler, installed once, that holds an
    interrupt while a send is in progress and otherwise passes it to `inner`, the handler
    ipykernel would have installed (SIG_IGN between requests, default_int_handler during
    one). If user code installs its own handler, ipykernel's own behaviour applies again
    until the next request."""

    def __init__(self):
        self.inner = signal.SIG_IGN
        self.held = 0
        self.pending = None
        self.handler = self.handle  # one bound method, to compare by identity

    def installed(self):
        return signal.getsignal(signal.SIGINT) is self.handler  # no system call

    def handle(self, signum, frame):
        if self.held:
            self.pending = frame
        else:
            self.deliver(frame)

    def deliver(self, frame):
        h = self.inner
        if h is signal.SIG_DFL:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        elif callable(h):
            h(signal.SIGINT, frame)  # default_int_handler raises KeyboardInterrupt

    def pre_handler_hook(self, kernel):
        if self.installed():
            kernel.saved_sigint_handler, self.inner = self.inner, signal.default_int_handler
        else:
            kernel.saved_sigint_handler = signal.signal(signal.SIGINT, self.handler)
            self.inner = signal.default_int_handler

    def post_handler_hook(self, kernel):
        if self.installed():
            self.inner = kernel.saved_sigint_handler
        else:  # user code replaced the handler: restore as ipykernel does
            signal.signal(signal.SIGINT, kernel.saved_sigint_handler)

    def uninterrupted(self, fn):
        """Runs fn (on the main thread) with SIGINT held until it returns. An interrupt is a
        KeyboardInterrupt raised between two bytecodes: in the middle of a multipart send
        it would leave part of a message on the socket and garble every later one; in a
        flush, it would drop the text taken from the buffer."""
        if self.installed():
            self.held += 1
            try:
                return fn()
            finally:
                self.held -= 1
                if not self.held and self.pending is not None:
                    frame, self.pending = self.pending, None
                    self.deliver(frame)
        old = signal.getsignal(signal.SIGINT)
        if old is None:  # a handler not installed from Python: leave it alone
            return fn()
        hits = []
        signal.signal(signal.SIGINT, lambda signum, frame: hits.append(frame))
        try:
            result = fn()
        finally:
            signal.signal(signal.SIGINT, old)
        if hits and callable(old):
            old(signal.SIGINT, hits[0])
        return result


_interrupts = _Interrupts()


def _hooks():
    kb = kernelbase.Kernel
    if not _ipykernel6(kb, "pre_handler_hook", "post_handler_hook"):
        return
    kb.pre_handler_hook = lambda self: _interrupts.pre_handler_hook(self)
    kb.post_handler_hook = lambda self: _interrupts.post_handler_hook(self)


def _direct_iopub():
    pub, out = iostream.IOPubThread, iostream.OutStream
    if not (_ipykernel6(pub, "_really_send", "send_multipart", "_handle_event",
                        "_is_master_process") and _ipykernel6(out, "_flush", "flush")):
        return
    lock = threading.RLock()  # every send on the iopub socket and every stream flush

    def master(io):
        return io is not None and io._is_master_process()

    def on_main():
        return threading.current_thread() is threading.main_thread()

    handle_event = pub._handle_event

    def _handle_event(self, msg):
        with lock:
            handle_event(self, msg)

    def send_multipart(self, *args, **kwargs):
        if not master(self):
            self.schedule(lambda: self._really_send(*args, **kwargs))
        elif on_main():
            with lock:
                _interrupts.uninterrupted(lambda: self._really_send(*args, **kwargs))
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
            with lock:
                _interrupts.uninterrupted(lambda: flush_now(self))
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
    if not _ipykernel6(kb, "_flush_control_queue"):
        return

    done = []  # one finished future, awaited as often as needed

    async def _flush_control_queue(self):
        if not done:
            done.append(asyncio.get_running_loop().create_future())
            done[0].set_result(None)
        return done[0]

    kb._flush_control_queue = _flush_control_queue


def _no_broadcasts():
    kb = kernelbase.Kernel
    if not _ipykernel6(kb, "_publish_execute_input", "_publish_status"):
        return
    publish_status = kb._publish_status

    def _publish_status(self, status, channel, parent=None):
        if status != "busy":
            publish_status(self, status, channel, parent)

    kb._publish_execute_input = lambda self, code, parent, execution_count: None
    kb._publish_status = _publish_status


def _plain_user_strings():
    shell = interactiveshell.InteractiveShell
    if not _ipykernel6(shell, "_format_user_obj"):
        return
    format_user_obj = shell._format_user_obj

    def _format_user_obj(self, obj):
        if type(obj) is str:
            return {"status": "ok", "data": {"text/plain": repr(obj)}, "metadata": {}}
        return format_user_obj(self, obj)

    shell._format_user_obj = _format_user_obj


def _direct_format_calls():
    caller = getattr(formatters.catch_format_error, "__wrapped__", None)
    if caller is None or not ipykernel.__version__.startswith("6."):
        return
    for cls in list(vars(formatters).values()):
        decorated = cls.__dict__.get("__call__") if isinstance(cls, type) else None
        func = getattr(decorated, "__wrapped__", None)
        try:  # a shape other than the decorator package's makes these raise: left as it is
            if func is None or inspect.getclosurevars(decorated).nonlocals.get("caller") is not caller:
                continue
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            continue
        rest = [(p.name, p.default) for p in params[2:]]  # after self and obj
        if len(params) < 2 or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params) or \
                any(d is inspect.Parameter.empty for _, d in rest):
            continue
        cls.__call__ = _direct_format_call(func, decorated, caller, rest)


def _direct_format_call(func, decorated, caller, rest):
    names = {n for n, _ in rest}

    def __call__(self, obj, *args, **kwargs):
        # As the decorator binds: positional arguments, then the rest by name or default.
        if len(args) > len(rest) or kwargs.keys() - names or any(n in kwargs for n, _ in rest[:len(args)]):
            return decorated(self, obj, *args, **kwargs)  # what binding refuses, as before
        full = args + tuple(kwargs.get(n, d) for n, d in rest[len(args):])
        return caller(func, self, obj, *full)

    return functools.update_wrapper(__call__, func)


def _fast_dates():
    try:
        from jupyter_client import jsonutil
    except ImportError:
        return
    pattern, ensure_tzinfo = getattr(jsonutil, "ISO8601_PAT", None), getattr(jsonutil, "_ensure_tzinfo", None)
    parse_date = getattr(jsonutil, "parse_date", None)
    if pattern is None or ensure_tzinfo is None or parse_date is None:
        return

    def fast_parse_date(s):
        if s is None or not pattern.match(s):
            return parse_date(s)
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return parse_date(s)  # dateutil's answer, or its error
        return ensure_tzinfo(dt)

    jsonutil.parse_date = fast_parse_date


def _quiet_log(log):
    """Raises log's level to the lowest of its handlers' levels when that is all that can
    emit its records (it does not propagate); a handler at NOTSET takes everything."""
    if not isinstance(log, logging.Logger) or log.propagate or not log.handlers:
        return
    floor = min(h.level for h in log.handlers)
    if log.level < floor:
        log.setLevel(floor)


def _prime_formatters(shell):
    """Formats one value, so that the formatters' lazily built state (their trait defaults,
    type tables and configuration lookups, about 2 ms of Python) is built here, while the
    sandbox warms up, and not in the first execution that returns a result."""
    shell.display_formatter.format(0)


def _direct_replies():
    app = kernelapp.IPKernelApp
    if not _ipykernel6(app, "init_kernel"):
        return
    init_kernel = app.init_kernel

    def init_and_patch(self):
        init_kernel(self)
        stream = getattr(self.kernel, "shell_stream", None)
        needed = ("_send_queue", "_send_callback", "_rebuild_io_state")
        if stream is None or not _ipykernel6(stream, *needed):
            return
        queue = stream.send_multipart

        def send_multipart(msg, flags=0, copy=True, track=False, callback=None, **kwargs):
            # The shell stream belongs to the main thread's event loop; a reply sent
            # there with nothing queued ahead of it goes out now, in order.
            if (callback is None and not kwargs and stream._send_callback is None
                    and stream.socket is not None and stream._send_queue.empty()
                    and threading.current_thread() is threading.main_thread()):
                def send():
                    try:
                        stream.socket.send_multipart(msg, flags=flags, copy=copy, track=track)
                    finally:
                        # ZeroMQ's descriptor is edge-triggered and a send can consume the
                        # edge of a request that arrived meanwhile: look at the socket's
                        # events again, as the stream does after its own sends, or that
                        # request would wait forever. (Inside the held section: an
                        # interrupt delivered after it must not skip this.)
                        stream._rebuild_io_state()

                _interrupts.uninterrupted(send)
                return
            queue(msg, flags, copy, track, callback, **kwargs)

        stream.send_multipart = send_multipart

    app.init_kernel = init_and_patch


_direct_iopub()
_plain_user_strings()
_direct_format_calls()
_no_control_flush()
_hooks()
_no_broadcasts()
_direct_replies()
_fast_dates()
_app = kernelapp.IPKernelApp.instance()
_app.initialize()
_quiet_log(_app.log)
_prime_formatters(_app.shell)
gc.enable()
gc.freeze()
_app.start()
