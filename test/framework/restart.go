package framework

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Component is a process of the control plane that a fault test stops,
// kills or starts.
type Component string

const (
	Etcd      Component = "etcd"
	APIServer Component = "kube-apiserver"
)

// restartable sets env up so that its processes can be restarted: envtest
// keeps a data or certificate directory it was given (it removes only those
// it made), keeps the ports it picked once, and keeps the CA of the client
// certificates in memory, so a restarted etcd has the same data at the same
// address and a restarted kube-apiserver the same serving certificate, port
// and client CA: clients configured before a restart keep working after it.
// envtest stops a process with SIGTERM only; KillComponent adds SIGKILL.
func restartable(env *envtest.Environment, dir string) error {
	etcdDir, certDir := filepath.Join(dir, "etcd"), filepath.Join(dir, "kube-apiserver")
	for _, d := range []string{etcdDir, certDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	env.ControlPlane.Etcd = &envtest.Etcd{DataDir: etcdDir}
	apiServer := &envtest.APIServer{CertDir: certDir}
	// On SIGTERM kube-apiserver stops listening, then waits for its open
	// connections to go idle for up to its request timeout (60s), and
	// open watches keep them busy. Told to end the watches, it stops in
	// seconds, which lets a test restart it within a lease's renew
	// deadline.
	apiServer.Configure().Set("shutdown-watch-termination-grace-period", "5s")
	env.ControlPlane.APIServer = apiServer
	// Starting or stopping again on a busy machine can take longer than
	// envtest's default of 20s; envtest kills a process that does not
	// stop in time, and reports an error.
	env.ControlPlaneStartTimeout = 2 * time.Minute
	env.ControlPlaneStopTimeout = 2 * time.Minute
	return nil
}

// StopComponent stops c with SIGTERM and waits for it to exit.
func (cp *ControlPlane) StopComponent(c Component) error {
	if err := cp.checkRestartable(); err != nil {
		return err
	}
	switch c {
	case Etcd:
		return cp.env.ControlPlane.Etcd.Stop()
	case APIServer:
		return cp.env.ControlPlane.APIServer.Stop()
	}
	return fmt.Errorf("unknown component %q", c)
}

// KillComponent kills c with SIGKILL, as a crash or the OOM killer would,
// and waits until it is gone.
func (cp *ControlPlane) KillComponent(c Component) error {
	if err := cp.checkRestartable(); err != nil {
		return err
	}
	// envtest keeps its *exec.Cmd to itself; the process is the child of
	// this one that was given this control plane's directory.
	var arg string
	switch c {
	case Etcd:
		arg = "--data-dir=" + cp.env.ControlPlane.Etcd.DataDir
	case APIServer:
		arg = "--cert-dir=" + cp.env.ControlPlane.APIServer.CertDir
	default:
		return fmt.Errorf("unknown component %q", c)
	}
	pid, err := childWithArg(arg)
	if err != nil {
		return fmt.Errorf("finding %s: %w", c, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing %s (pid %d): %w", c, pid, err)
	}
	// envtest waits for its child, which removes it from /proc.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still there 30s after SIGKILL", c, pid)
		}
	}
}

// StartComponent starts c again, stopped or killed before, with the same
// data, ports and certificates, and waits until it reports healthy.
func (cp *ControlPlane) StartComponent(c Component) error {
	if err := cp.checkRestartable(); err != nil {
		return err
	}
	switch c {
	case Etcd:
		return cp.env.ControlPlane.Etcd.Start()
	case APIServer:
		return cp.env.ControlPlane.APIServer.Start()
	}
	return fmt.Errorf("unknown component %q", c)
}

func (cp *ControlPlane) checkRestartable() error {
	if !cp.restartable {
		// Without directories of its own envtest would remove etcd's data
		// on a stop.
		return errors.New("the control plane was not started with Options.Restartable")
	}
	return nil
}

// childWithArg returns the PID of the child of this process that was
// started with arg among its arguments.
func childWithArg(arg string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || parentOf(pid) != self {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(cmdline, []byte{0}) {
			if string(a) == arg {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no child process runs with %s", arg)
}

// parentOf returns pid's parent PID, or -1 if it cannot be read.
func parentOf(pid int) int {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// The command name, in parentheses, may hold spaces: fields count from
	// the last ')'.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return -1
	}
	return ppid
}
