package agent

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/jupyter"
)

// execution is one queued, running or finished execution.
type execution struct {
	req     agentapi.ExecuteRequest // ID set, limits checked
	timeout time.Duration
	limit   int           // per output stream
	done    chan struct{} // closed once res (or err) is final
	// cancelc is signalled (once) when the client goes away or asks for an interrupt.
	cancelc chan struct{}

	// Guarded by kernelSup.mu.
	queued  time.Time
	started time.Time
	res     agentapi.Execution
	// err, when set, means the execution never ran: the handler returns it.
	err error
}

// submit queues e. It fails when the ID is taken, the queue is full or the supervisor
// is closing.
func (s *kernelSup) submit(e *execution) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errkind.New(errkind.Unavailable, "the agent is shutting down")
	case s.execs[e.req.ID] != nil:
		return errkind.New(errkind.AlreadyExists, "execution %q already exists", e.req.ID)
	case len(s.queue) >= agentapi.MaxExecuteQueue:
		return errkind.New(errkind.LimitExceeded, "%d executions are already waiting for the kernel", len(s.queue))
	}
	e.queued = time.Now()
	s.queue = append(s.queue, e)
	s.execs[e.req.ID] = e
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// next takes the oldest queued execution and marks it running.
func (s *kernelSup) next() *execution {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return nil
	}
	e := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	s.running = e
	e.started = time.Now()
	s.info.State = "busy"
	return e
}

// cancel stops e for a client that went away or asked for an interrupt: a queued
// execution is dropped, a running one interrupted.
func (s *kernelSup) cancel(e *execution) {
	s.mu.Lock()
	for i, q := range s.queue {
		if q == e {
			s.queue = append(s.queue[:i:i], s.queue[i+1:]...)
			e.res = agentapi.Execution{ID: e.req.ID, Status: agentapi.StatusCanceled, Result: emptyResult}
			s.finishLocked(e)
			s.mu.Unlock()
			return
		}
	}
	s.mu.Unlock()
	select {
	case e.cancelc <- struct{}{}:
	default:
	}
}

// interruptRunning cancels the running execution, if any, or else interrupts the kernel.
func (s *kernelSup) interruptRunning() {
	s.mu.Lock()
	e := s.running
	s.mu.Unlock()
	if e != nil {
		s.cancel(e)
		return
	}
	s.interrupt()
}

// failQueued fails every queued execution with err.
func (s *kernelSup) failQueued(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.queue {
		e.err = err
		msg, _ := errkind.PublicMessage(err)
		e.res = agentapi.Execution{ID: e.req.ID, Status: agentapi.StatusFailed, Stderr: msg, Result: emptyResult}
		s.finishLocked(e)
	}
	s.queue = nil
}

// finishLocked publishes e's result and keeps it for GET, forgetting the oldest kept
// execution beyond MaxKeptExecutions. Preconditions: s.mu is held.
func (s *kernelSup) finishLocked(e *execution) {
	if s.running == e {
		s.running = nil
		if s.info.State == "busy" {
			s.info.State = "idle"
		}
	}
	close(e.done)
	s.kept = append(s.kept, e.req.ID)
	if len(s.kept) > agentapi.MaxKeptExecutions {
		delete(s.execs, s.kept[0])
		s.kept[0] = ""
		s.kept = s.kept[1:]
	}
}

// snapshot returns e's state: the final result, or Running.
func (s *kernelSup) snapshot(e *execution) agentapi.Execution {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-e.done:
		return e.res
	default:
	}
	ex := agentapi.Execution{ID: e.req.ID, Status: agentapi.StatusRunning}
	if !e.started.IsZero() {
		ex.DurationMS = time.Since(e.started).Milliseconds()
	}
	return ex
}

func (s *kernelSup) lookup(id string) *execution {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.execs[id]
}

// outcome is how an execution ended.
type outcome int

const (
	outcomeDone     outcome = iota // the kernel replied
	outcomeTimeout                 // the timeout expired
	outcomeAborted                 // the kernel died or was lost
	outcomeCanceled                // the client went away or interrupted, and the kernel was killed
	outcomeStopped                 // the agent is shutting down
)

// execute runs e on the kernel and publishes its result. Only run calls it. When the
// kernel had to be killed, execute leaves s.k nil so that run starts a new one.
func (s *kernelSup) execute(e *execution) {
	start := time.Now()
	col := newCollector(e.limit, s.maxDisplay)
	restarted := false
	s.mu.Lock()
	if s.unreported {
		s.unreported = false
		restarted = true
		col.stderr.keep([]byte(restartNote))
	}
	s.mu.Unlock()
	if e.req.EmptyKernel {
		s.replaced(false)
		restarted = true
		if err := s.startKernel(); err != nil {
			s.failRunning(e, errkind.New(errkind.Unavailable, "starting an empty kernel: %v", err))
			return
		}
	}
	k := s.k
	exprs := map[string]string{resultKey: resultExpr}
	if e.req.Warmup {
		exprs[settleKey] = settleExpr
	}
	ex, err := k.client.Execute(jupyter.ExecuteRequest{
		Code:            e.req.Code,
		StoreHistory:    true,
		UserExpressions: exprs,
	}, col.add)
	if err != nil {
		s.replaced(false)
		s.finishRunning(e, s.failure(e, col, outcomeAborted, true, start))
		return
	}
	timer := time.NewTimer(e.timeout)
	defer timer.Stop()
	var grace <-chan time.Time
	// idle answers whether the kernel serves a kernel_info request, asked as the interrupt
	// goes out: ipykernel drops the reply of a request that the interrupt reached outside
	// the user's code (it logs "KeyboardInterrupt caught in kernel") and goes on, and then
	// only this tells a kernel that is fine from one that is stuck.
	var idle <-chan bool
	probeCtx, stopProbe := context.WithCancel(context.Background())
	defer stopProbe()
	interrupt := func() {
		s.interrupt()
		grace = time.After(s.grace)
		c := make(chan bool, 1)
		idle = c
		go func() { // ends with probeCtx at the latest
			_, err := k.client.KernelInfo(probeCtx)
			c <- err == nil
		}()
	}
	timedOut, canceled := false, false
	how := outcomeDone
wait:
	for {
		select {
		case <-ex.Done():
			break wait
		case <-timer.C:
			timedOut = true
			if grace == nil {
				interrupt()
			}
		case <-e.cancelc:
			if grace == nil {
				canceled = true
				interrupt()
			}
		case ok := <-idle:
			idle = nil
			if !ok {
				continue
			}
			if ex.Replied() {
				// The reply came after all, before the probe's (shell replies keep
				// their order); its idle status is still on the way on iopub.
				select {
				case <-ex.Done():
					break wait
				case <-k.exited:
					continue // handled above as a kernel that died
				case <-grace:
					// Answers, but the idle status never came: kept, as below.
				}
			}
			how = outcomeCanceled
			if timedOut {
				how = outcomeTimeout
			}
			ex.Release()
			s.log.Info("the interrupted execution got no reply, but the kernel answers: keeping it", "execution", e.req.ID)
			s.finishRunning(e, s.failure(e, col, how, restarted, start))
			return
		case <-grace:
			how = outcomeCanceled
			if timedOut {
				how = outcomeTimeout
			}
			break wait
		case <-k.exited:
			// Killed by the interrupt, or died on its own (out of memory, say).
			switch {
			case timedOut:
				how = outcomeTimeout
			case canceled:
				how = outcomeCanceled
			default:
				how = outcomeAborted
			}
			break wait
		case <-s.stop:
			how = outcomeStopped
			break wait
		case reply := <-s.restartc:
			ex.Release()
			s.replaced(false)
			s.finishRunning(e, s.failure(e, col, outcomeAborted, true, start))
			reply <- s.startKernel()
			return
		}
	}
	if how == outcomeDone {
		reply, err := ex.Reply()
		if err != nil {
			// The connection broke: the kernel died or is unusable.
			how = outcomeAborted
		} else {
			res := s.success(e, col, reply, timedOut, canceled, start)
			res.KernelRestarted = restarted
			s.finishRunning(e, res)
			return
		}
	}
	ex.Release()
	if how == outcomeStopped {
		s.finishRunning(e, s.failure(e, col, how, restarted, start))
		return
	}
	if how == outcomeAborted {
		s.log.Warn("the kernel died during an execution", "status", k.status(), "execution", e.req.ID)
	} else {
		s.log.Warn("the kernel did not stop after an interrupt: replacing it", "execution", e.req.ID, "grace", s.grace)
	}
	s.replaced(false)
	s.finishRunning(e, s.failure(e, col, how, true, start))
}

// success builds the result of an execution the kernel replied to.
func (s *kernelSup) success(e *execution, col *collector, r jupyter.ExecuteReply, timedOut, canceled bool, start time.Time) agentapi.Execution {
	col.seal()
	res := agentapi.Execution{ID: e.req.ID, DurationMS: time.Since(start).Milliseconds(), Result: emptyResult}
	res.Outputs, res.OutputsTruncated = col.outputs, col.outputsTruncated
	switch {
	case timedOut:
		// The code stopped within the grace period: the kernel and its state live on.
		res.Status = agentapi.StatusFailed
		res.Stdout, res.StdoutTruncated = col.stdout.text(), col.stdout.truncated
		res.Stderr = agentapi.TimeoutMessage
		res.Error = &agentapi.ExecutionError{Name: "TimeoutError", Value: agentapi.TimeoutMessage}
		return res
	case r.Status == "ok":
		res.Status = agentapi.StatusSucceeded
		res.Result = convertResult(r.UserExpressions[resultKey], col.result, col.image, e.req.JupyterFormat)
	case r.Status == "error":
		res.Status = agentapi.StatusFailed
		if canceled {
			res.Status = agentapi.StatusCanceled
		}
		ee := jupyter.Error{EName: r.EName, EValue: r.EValue, Traceback: r.Traceback}
		if col.sawError {
			ee = col.err
		} else {
			col.stderr.keep([]byte(tracebackText(ee.Traceback)))
		}
		res.Error = &agentapi.ExecutionError{Name: clip(ee.EName, 1024), Value: clip(stripANSI(ee.EValue), 64<<10), Traceback: stripAll(ee.Traceback)}
	default: // "aborted", or anything else
		res.Status = agentapi.StatusFailed
		col.stderr.keep([]byte(agentapi.AbortedMessage))
		res.Error = &agentapi.ExecutionError{Name: "ExecutionAborted", Value: agentapi.AbortedMessage}
	}
	res.Stdout, res.StdoutTruncated = col.stdout.text(), col.stdout.truncated
	res.Stderr, res.StderrTruncated = col.stderr.text(), col.stderr.truncated
	return res
}

// failure builds the result of an execution that ended without a reply.
func (s *kernelSup) failure(e *execution, col *collector, how outcome, restarted bool, start time.Time) agentapi.Execution {
	col.seal()
	res := agentapi.Execution{
		ID: e.req.ID, Status: agentapi.StatusFailed, Result: emptyResult,
		Stdout: col.stdout.text(), StdoutTruncated: col.stdout.truncated,
		Outputs: col.outputs, OutputsTruncated: col.outputsTruncated,
		KernelRestarted: restarted, DurationMS: time.Since(start).Milliseconds(),
	}
	switch how {
	case outcomeTimeout:
		res.Stderr = agentapi.TimeoutMessage
		res.Error = &agentapi.ExecutionError{Name: "TimeoutError", Value: agentapi.TimeoutMessage}
	case outcomeCanceled, outcomeStopped:
		res.Status = agentapi.StatusCanceled
		res.Stderr, res.StderrTruncated = col.stderr.text(), col.stderr.truncated
		res.Error = &agentapi.ExecutionError{Name: "Canceled", Value: "the execution was interrupted"}
	default:
		res.Stderr = agentapi.AbortedMessage
		res.Error = &agentapi.ExecutionError{Name: "ExecutionAborted", Value: agentapi.AbortedMessage}
	}
	return res
}

func (s *kernelSup) finishRunning(e *execution, res agentapi.Execution) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.res = res
	s.finishLocked(e)
}

func (s *kernelSup) failRunning(e *execution, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg, _ := errkind.PublicMessage(err)
	e.err = err
	e.res = agentapi.Execution{ID: e.req.ID, Status: agentapi.StatusFailed, Stderr: msg, Result: emptyResult}
	s.finishLocked(e)
}

// collector gathers an execution's iopub messages, within its bounds. The client's
// iopub goroutine calls add; seal stops it, as the client may still call add for a
// moment after an execution is given up.
type collector struct {
	mu sync.Mutex
	// All fields guarded by mu until seal returns.
	sealed           bool
	stdout, stderr   capture
	outputs          []agentapi.Output
	displayBytes     int
	outputsTruncated bool
	maxDisplay       int
	result           *agentapi.Output // the execute_result, if any
	image            string           // base64 PNG of the last image shown
	sawError         bool
	err              jupyter.Error
}

func newCollector(limit, maxDisplay int) *collector {
	return &collector{stdout: capture{limit: limit}, stderr: capture{limit: limit}, maxDisplay: maxDisplay}
}

func (c *collector) seal() {
	c.mu.Lock()
	c.sealed = true
	c.mu.Unlock()
}

func (c *collector) add(m *jupyter.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealed {
		return
	}
	switch m.Header.MsgType {
	case "stream":
		st, truncated, err := jupyter.ParseStream(m)
		if err != nil {
			return
		}
		w := &c.stdout
		if st.Name == "stderr" {
			w = &c.stderr
		}
		w.keep([]byte(st.Text))
		if truncated {
			w.truncated = true
		}
	case "display_data", "execute_result":
		if m.Truncated || c.displayBytes+len(m.Content) > c.maxDisplay {
			c.outputsTruncated = true
			return
		}
		var d jupyter.DisplayData
		if m.Decode(&d) != nil || len(d.Data) == 0 {
			return
		}
		c.displayBytes += len(m.Content)
		out := agentapi.Output{Type: m.Header.MsgType, Data: d.Data, Metadata: d.Metadata}
		c.outputs = append(c.outputs, out)
		if png, ok := jsonString(d.Data["image/png"]); ok {
			c.image = strings.Join(strings.Fields(png), "")
		}
		if m.Header.MsgType == "execute_result" {
			c.result = &out
		}
	case "error":
		var e jupyter.Error
		if m.Decode(&e) != nil {
			return
		}
		c.sawError, c.err = true, e
		c.stderr.keep([]byte(tracebackText(e.Traceback)))
	}
}
