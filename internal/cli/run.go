package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/klock-io/klock/internal/process"
	"github.com/klock-io/klock/klock"
)

// Run holds the Lease o names while o.Command runs.
func Run(ctx context.Context, o *Options, s Streams) error {
	// Catch signals from the start: one that arrives while klock waits ends
	// the wait; once the command runs, they are forwarded to it.
	sigs := make(chan os.Signal, 8)
	process.Notify(sigs, process.Forwarded...)
	defer signal.Stop(sigs)

	log := setUpLogging(o.Debug, s)
	kubeconfig := o.kubeconfig()
	var rc *rest.Config
	var err error
	if o.APIServer != "" {
		rc, err = pinnedConfig(o.APIServer, os.Getenv(EnvAPICA))
	} else {
		rc, err = restConfig(kubeconfig)
	}
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	cfg := o.lockConfig(os.Getenv, kubeconfig)
	cfg.Logger = log
	lock, err := klock.NewForConfig(rc, cfg)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	cfg = lock.Config()
	killAfter, err := o.killAfter(cfg)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}

	hold, err := acquire(ctx, o, lock, sigs)
	if err != nil {
		return err
	}

	// Drop what an enclosing klock set, so that a nested run's command sees
	// its own lease: getenv returns the first of duplicate keys.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(commandEnv, k)
	})
	env = append(env,
		EnvLease+"="+cfg.Name,
		EnvLeaseNamespace+"="+cfg.Namespace,
		EnvHolderIdentity+"="+cfg.Identity,
		EnvFencingToken+"="+strconv.FormatUint(hold.Token(), 10),
	)
	runCtx, stop := context.WithCancel(ctx)
	go func() {
		select {
		case <-hold.Lost():
			stop()
		case <-runCtx.Done():
		}
	}()
	var (
		code   int
		runErr error
		// The Lease may have been lost between the acquisition and now,
		// for instance while a slow acquisition write was answered: the
		// command must not start then.
		started = hold.Err() == nil
	)
	if started {
		runner := &process.Runner{Signals: sigs, StopSignal: o.Signal, KillAfter: killAfter}
		code, runErr = runner.Run(runCtx, o.Command, env)
	}
	stop()

	// Give the Lease back with a context of its own: the command is done,
	// and the next waiter should not have to wait for the Lease to expire.
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.RenewDeadline)
	defer cancel()
	if err := hold.Release(relCtx); err != nil {
		fmt.Fprintf(s.Err, "klock: %v; the lease frees itself %s after its last renewal\n", err, cfg.LeaseDuration)
	}
	if lost := hold.Err(); lost != nil {
		if !started {
			return &ExitError{Code: ExitLost, Err: fmt.Errorf("%w before the command started; not running it", lost)}
		}
		return &ExitError{Code: ExitLost, Err: fmt.Errorf("%w; the command was stopped with %s and exited with %d", lost, signalName(o.Signal), code)}
	}
	if runErr != nil {
		return &ExitError{Code: code, Err: runErr}
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// acquire waits for the lock as o says, and gives up on the first forwarded
// signal with the exit code 128+N that a shell expects.
func acquire(ctx context.Context, o *Options, lock *klock.Lock, sigs <-chan os.Signal) (*klock.Hold, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		hold *klock.Hold
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		switch {
		case o.NonBlock:
			r.hold, r.err = lock.TryAcquire(ctx)
		case o.Wait > 0:
			waitCtx, cancel := context.WithTimeoutCause(ctx, o.Wait, fmt.Errorf("gave up after --wait %s", o.Wait))
			defer cancel()
			r.hold, r.err = lock.Acquire(waitCtx)
		default:
			r.hold, r.err = lock.Acquire(ctx)
		}
		done <- r
	}()

	var r result
	select {
	case r = <-done:
	case sig := <-sigs:
		cancel()
		if r = <-done; r.hold != nil {
			// The lock came in the same instant; give it straight back.
			relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lock.Config().RenewDeadline)
			defer cancel()
			_ = r.hold.Release(relCtx)
		}
		n, _ := sig.(syscall.Signal)
		return nil, &ExitError{Code: 128 + int(n)}
	}
	switch {
	case r.err == nil:
		return r.hold, nil
	case errors.Is(r.err, klock.ErrHeld):
		return nil, &ExitError{Code: int(o.ConflictExitCode), Err: fmt.Errorf("%w; not running the command", r.err)}
	default:
		return nil, &ExitError{Code: ExitFailure, Err: r.err}
	}
}

// setUpLogging routes klock's and client-go's logs to stderr with --debug,
// and silences client-go otherwise, so that users see one line per problem
// instead of raw klog output.
func setUpLogging(debug bool, s Streams) logr.Logger {
	if !debug {
		klog.SetLogger(logr.Discard())
		rest.SetDefaultWarningHandler(rest.NoWarnings{})
		return logr.Discard()
	}
	log := textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(4), textlogger.Output(s.Err)))
	klog.SetLogger(log)
	return log
}

func signalName(sig syscall.Signal) string {
	return signalValue{&sig}.String()
}
