// Package process runs the command that klock guards, and keeps every
// process of that command inside the lock: Run returns only once the command
// and everything it started have exited, so that klock releases the Lease
// only then, as flock(1) does for a background worker that inherited the
// lock.
//
// klock does not start the command itself. Run re-executes klock's own
// binary as a supervisor (see RunIfSupervisor), and the supervisor starts
// the command:
//
//   - It is a child subreaper (PR_SET_CHILD_SUBREAPER): processes that the
//     command leaves behind (`worker &`, double forks, daemons) are
//     re-parented to it rather than to init. It waits for all of them, and
//     exits only when none is left, with the command's exit code.
//   - It delivers the signals that Run forwards, which reach it through a
//     pipe, to the command's process group and to every process below it,
//     including those that left the group or the session (setsid).
//   - When klock dies, even by SIGKILL, the pipe reads end of file, and the
//     supervisor kills every process below it before it exits.
//
// Reaping orphans means waiting for any child, which takes the exit status
// of every child. That cannot be done in klock: client-go may run exec
// credential plugins (kubeconfigs with an exec: section, as on EKS and GKE)
// as children of klock and waits for them itself, and a token refresh fails
// if their status is taken elsewhere. The supervisor runs no client code,
// so every child it has belongs to the command.
//
// Where the promise cannot be kept:
//   - The supervisor killed by SIGKILL on its own takes only the command's
//     direct child with it (Pdeathsig); the rest is re-parented above klock
//     and keeps running. klock then exits with 137. Outside a terminal the
//     supervisor has a process group of its own, so a KILL sent to klock's
//     group does not reach it; at a terminal it shares the foreground
//     group with klock.
//   - A process that the command has someone else start (systemd-run, a
//     container runtime, ssh) is not below the supervisor. A descendant that
//     makes itself a subreaper is, and so is what it collects.
//   - The processes below the supervisor are found in /proc, which must be
//     that of its own PID namespace. Without it, signals reach only the
//     command's process group, and when klock dies the supervisor waits for
//     processes outside that group instead of killing them.
//   - Of the signals ignored when klock started, only SIGHUP and SIGINT
//     (nohup, background jobs of a shell) stay ignored for the command: the
//     Go runtime installs its own handler for any other one.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
)

// Exit codes for a command that could not be started, as in env(1) and
// timeout(1).
const (
	ExitCannotInvoke = 126
	ExitNotFound     = 127
)

// Forwarded are the signals klock passes on to the command.
var Forwarded = []os.Signal{
	syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

// Notify is signal.Notify for those of sigs that are not ignored. Catching
// a signal replaces its disposition for good, and a caught signal is reset
// to the default by exec: signal.Notify would make `nohup klock ...` die on
// a hangup, and would take a background job's ignored SIGINT away from the
// command.
func Notify(c chan<- os.Signal, sigs ...os.Signal) {
	for _, sig := range sigs {
		if !signal.Ignored(sig) {
			signal.Notify(c, sig)
		}
	}
}

// StartError reports a command that could not be started; Code is 126 or 127.
type StartError struct {
	Code int
	Err  error
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Runner starts commands with the process's standard streams.
type Runner struct {
	// Signals delivers the signals to forward to every process of the
	// command.
	Signals <-chan os.Signal
	// StopSignal is sent to every process of the command when the context
	// passed to Run ends.
	StopSignal syscall.Signal
	// KillAfter, when positive, sends SIGKILL that long after StopSignal to
	// every process of the command that is still running.
	KillAfter time.Duration
}

// Run runs argv with env until it and every process it started have
// exited, and returns its exit code: its own status, or 128+N if signal N
// ended it. When ctx ends, the command's processes get StopSignal (and
// SIGKILL after KillAfter); Run still waits for all of them to exit. They
// all die with SIGKILL if klock itself dies, so that none can outlive the
// lock that guards it.
//
// The program must call RunIfSupervisor first thing in main (and TestMain),
// since Run re-executes it as the command's supervisor.
func (r *Runner) Run(ctx context.Context, argv, env []string) (int, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		code := ExitNotFound
		if errors.Is(err, fs.ErrPermission) {
			code = ExitCannotInvoke
		}
		return code, &StartError{Code: code, Err: fmt.Errorf("cannot run %q: %w", argv[0], err)}
	}

	// Signals typed at a terminal already reach the whole foreground
	// process group; the command stays in it so that it can still read the
	// terminal. Elsewhere (containers, CronJobs) the command gets a group of
	// its own, so that a signal reaches its children at once.
	interactive := term.IsTerminal(int(os.Stdin.Fd()))

	sup, err := startSupervisor(path, argv, env, interactive)
	if err != nil {
		return ExitCannotInvoke, &StartError{Code: ExitCannotInvoke, Err: fmt.Errorf("cannot run %q: %w", argv[0], err)}
	}
	// Closed only once the supervisor has exited: before that, end of file
	// tells it that klock died.
	defer sup.control.Close()

	exited := make(chan int, 1)
	go func() {
		if os.Getpid() == 1 {
			exited <- reapUntil(sup.proc.Pid)
			_ = sup.proc.Release()
		} else {
			exited <- wait(sup.proc)
		}
	}()
	if err := sup.started(); err != nil {
		<-exited
		return ExitCannotInvoke, &StartError{Code: ExitCannotInvoke, Err: fmt.Errorf("cannot run %q: %w", argv[0], err)}
	}

	done := ctx.Done()
	var kill <-chan time.Time
	for {
		select {
		case code := <-exited:
			return code, nil
		case sig := <-r.Signals:
			s, ok := sig.(syscall.Signal)
			if !ok || (interactive && (s == syscall.SIGINT || s == syscall.SIGQUIT)) {
				continue // the terminal delivered it to the command already
			}
			sup.signal(s)
		case <-done:
			done = nil
			sup.signal(r.StopSignal)
			if r.KillAfter > 0 {
				kill = time.After(r.KillAfter)
			}
		case <-kill:
			// The supervisor still runs, so some process of the command
			// does, even if the command itself has exited.
			sup.signal(syscall.SIGKILL)
		}
	}
}

// supervisor is klock's end of a running supervisor.
type supervisor struct {
	proc *os.Process
	// control carries signal numbers, one byte each, to the supervisor.
	control *os.File
	// report carries the outcome of starting the command: "ok", or the
	// errno of the failed exec.
	report *os.File
}

func startSupervisor(path string, argv, env []string, interactive bool) (*supervisor, error) {
	mode := modeGroup
	if interactive {
		mode = modeForeground
	}
	// os.Pipe sets close-on-exec on both ends in klock, so that no other
	// child of klock (an exec credential plugin) holds the write end of
	// control, which would keep the supervisor from seeing klock die.
	controlR, controlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	reportR, reportW, err := os.Pipe()
	if err != nil {
		controlR.Close()
		controlW.Close()
		return nil, err
	}
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, markerKey+"=")
	})
	// No Pdeathsig for the supervisor: killed with klock, it could not kill
	// the rest of the command. It learns of klock's death from control.
	// Outside a terminal it gets a process group of its own, so that a
	// KILL sent to klock's group (timeout -s KILL sends one) leaves it
	// alive to kill the command's processes.
	proc, err := os.StartProcess(selfExe, append([]string{os.Args[0], supervisorArg, mode, path}, argv...), &os.ProcAttr{
		Env:   append(env, markerKey+"="+markerValue),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, controlR, reportW}, // controlFD, reportFD
		Sys:   &syscall.SysProcAttr{Setpgid: !interactive},
	})
	controlR.Close()
	reportW.Close()
	if err != nil {
		controlW.Close()
		reportR.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("klock starts a copy of itself through %s to supervise the command, and needs /proc mounted for that: %w", selfExe, err)
		}
		return nil, fmt.Errorf("starting klock's supervisor: %w", err)
	}
	return &supervisor{proc: proc, control: controlW, report: reportR}, nil
}

// started waits until the supervisor has started the command, and returns
// why it could not.
func (s *supervisor) started() error {
	defer s.report.Close()
	b, _ := io.ReadAll(s.report)
	switch msg := string(b); {
	case msg == reportOK:
		return nil
	case msg == "":
		return errors.New("klock's supervisor exited before it started the command")
	default:
		n, err := strconv.Atoi(msg)
		if err != nil {
			return fmt.Errorf("klock's supervisor reported %q", msg)
		}
		return syscall.Errno(n)
	}
}

// signal asks the supervisor to send sig to every process of the command.
// An error means that the supervisor has exited, and Run is about to
// return.
func (s *supervisor) signal(sig syscall.Signal) {
	_, _ = s.control.Write([]byte{byte(sig)})
}

func wait(p *os.Process) int {
	state, err := p.Wait()
	if err != nil {
		return ExitCannotInvoke
	}
	return exitCode(state.Sys().(syscall.WaitStatus))
}

func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
