package process

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// How Run and the supervisor it starts know each other. The supervisor is
// the program's own binary, started with
//
//	argv: the program's argv[0], supervisorArg, a mode, the command's path, the command's argv
//	env:  the command's, plus markerKey=markerValue
//	fds:  stdin, stdout, stderr, controlFD, reportFD
//
// A user would have to set the marker and open both pipes by hand to start
// a supervisor by mistake, and the command never sees any of it.
const (
	selfExe       = "/proc/self/exe"
	markerKey     = "KLOCK_INTERNAL_SUPERVISOR"
	markerValue   = "1"
	supervisorArg = "supervise"

	// modeGroup gives the command a process group of its own;
	// modeForeground leaves it in the terminal's foreground group.
	modeGroup      = "group"
	modeForeground = "foreground"

	controlFD = 3
	reportFD  = 4
	reportOK  = "ok"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from linux/prctl.h (Linux
// 3.4). The syscall package does not name it; golang.org/x/sys/unix does,
// but this module requires that only indirectly.
const prSetChildSubreaper = 36

// killRetry is how often the supervisor looks again for processes to KILL:
// one may fork while it is being killed, and its child then needs a KILL of
// its own.
const killRetry = 20 * time.Millisecond

// RunIfSupervisor supervises a command and exits if Run started this
// process for that, and returns at once otherwise. Run starts the program's
// own binary as the supervisor, so every program that uses a Runner must
// call RunIfSupervisor first thing in main, and tests that use one first
// thing in TestMain.
func RunIfSupervisor() {
	v, ok := os.LookupEnv(markerKey)
	if !ok {
		return
	}
	// Neither the command nor anything this program starts inherits it.
	_ = os.Unsetenv(markerKey)
	if v != markerValue || len(os.Args) < 5 || os.Args[1] != supervisorArg || !isPipe(controlFD) || !isPipe(reportFD) {
		return
	}
	switch mode := os.Args[2]; mode {
	case modeGroup, modeForeground:
		os.Exit(supervise(os.Args[3], os.Args[4:], mode == modeGroup))
	}
}

func isPipe(fd int) bool {
	var st syscall.Stat_t
	return syscall.Fstat(fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFIFO
}

// supervise starts the command, reaps it and every orphan below it, and
// returns the command's exit code once nothing below is left.
func supervise(path string, argv []string, group bool) int {
	// Files passed to a child come without close-on-exec; the command must
	// not hold either pipe (control would then never read end of file).
	syscall.CloseOnExec(controlFD)
	syscall.CloseOnExec(reportFD)
	control := os.NewFile(controlFD, "klock-control")
	report := os.NewFile(reportFD, "klock-report")

	// Named after the path it was executed by, ps would show it as "exe".
	_ = os.WriteFile("/proc/self/comm", []byte(filepath.Base(os.Args[0])), 0)

	// Signals sent to klock's process group or typed at the terminal reach
	// the supervisor too. It must survive them, and must not act on them:
	// klock forwards those it catches through control. Nothing reads the
	// channel, so they are dropped. Ignored ones stay ignored, so that the
	// command inherits SIG_IGN.
	Notify(make(chan os.Signal, 1), Forwarded...)

	// Orphans below the supervisor come to it rather than to init. Should
	// this fail (Linux before 3.4), they escape to init as they did before.
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)

	// Pdeathsig fires when the thread that forked the child exits. This
	// goroutine keeps its thread to the end: the supervisor ends in os.Exit.
	runtime.LockOSThread()
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setpgid: group, Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		errno := syscall.ENOEXEC // ForkExec fails with an Errno; this is in case it did not
		_ = errors.As(err, &errno)
		_, _ = report.WriteString(strconv.Itoa(int(errno)))
		return ExitCannotInvoke
	}
	_, _ = report.WriteString(reportOK)
	_ = report.Close()
	s := &supervision{command: pid, group: group}
	return s.run(control)
}

// supervision is the state of a supervisor whose command has started.
type supervision struct {
	command int  // pid
	group   bool // the command leads a process group of its own
	exited  bool // the command has been reaped
}

func (s *supervision) run(control *os.File) int {
	signals := make(chan syscall.Signal)
	go func() {
		b := make([]byte, 64)
		for {
			n, err := control.Read(b)
			for _, c := range b[:n] {
				signals <- syscall.Signal(c)
			}
			if err != nil { // end of file: klock is gone
				close(signals)
				return
			}
		}
	}()

	// Waiting for any child reaps the command and every orphan that came
	// to the supervisor. When no child is left, nothing is left below: an
	// exiting process's children are re-parented before it can be reaped.
	exit := make(chan int, 1)
	gone := make(chan struct{})
	go func() {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, 0, nil)
			switch {
			case err == syscall.EINTR:
			case err != nil:
				close(gone)
				return
			case pid == s.command:
				exit <- exitCode(ws)
			}
		}
	}()

	var code int
	var retry <-chan time.Time
	for {
		select {
		case code = <-exit:
			s.exited = true
		case <-gone:
			if !s.exited {
				code = <-exit // sent before gone was closed
			}
			return code
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				sig = syscall.SIGKILL
			}
			if sig == 0 {
				continue
			}
			s.signal(sig)
			if sig == syscall.SIGKILL && retry == nil {
				t := time.NewTicker(killRetry)
				defer t.Stop()
				retry = t.C
			}
		case <-retry:
			s.signal(syscall.SIGKILL)
		}
	}
}

// signal sends sig to every process below the supervisor. Sent to the
// command's process group first, it reaches the group's members at once;
// the others (which left it with setpgid or setsid, or are in the
// terminal's foreground group) get it one by one, and each only once, so
// that a handler does not run twice.
//
// Once the command has been reaped, its process group is left alone: were
// it empty, its number could name an unrelated group later.
func (s *supervision) signal(sig syscall.Signal) {
	viaGroup := s.group && !s.exited
	if viaGroup {
		_ = syscall.Kill(-s.command, sig)
	}
	for _, p := range descendants(os.Getpid()) {
		if viaGroup && p.pgrp == s.command {
			continue
		}
		_ = syscall.Kill(p.pid, sig)
	}
}
