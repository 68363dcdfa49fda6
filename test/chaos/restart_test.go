package chaos

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/klock-io/klock/test/framework"
)

// restartTimings leave a renew deadline far longer than a restart of
// kube-apiserver or etcd on a busy machine takes, so that the holder must
// ride a restart out without losing the lock.
var restartTimings = timings{lease: 45 * time.Second, renew: 30 * time.Second, retry: time.Second}

// d. kube-apiserver or etcd is restarted (stopped with SIGTERM, or killed
// with SIGKILL, then started again on the same data and port) while one
// klock holds the lock and two wait.
//
// What klock does: while the API server cannot answer, the holder's
// renewals fail and it retries them every quarter retry period; its renew
// deadline (30s here) is counted from its last successful renewal, so an
// outage shorter than that costs it nothing: the first renewal after the
// restart succeeds and the command never notices. The waiters' watches end
// with the connection; they read the Lease again every retry period until
// the API server answers, then watch again. Asserted: the holder keeps the
// lock (its command is never signalled, and ends only when the test sends
// TERM), each waiter then gets the lock within a retry period (+ slack) of
// the previous command's end, and the exclusion invariant holds.
func TestControlPlaneRestart(t *testing.T) {
	fullOnly(t)
	for _, tc := range []struct {
		name      string
		component framework.Component
		kill      bool
	}{
		{name: "kube-apiserver stopped and started", component: framework.APIServer},
		{name: "kube-apiserver killed and started", component: framework.APIServer, kill: true},
		{name: "etcd stopped and started", component: framework.Etcd},
		{name: "etcd killed and started", component: framework.Etcd, kill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScenario(t)
			tm := restartTimings
			args := append([]string{"-l", "restart", "--debug"}, tm.args()...)
			a := s.klock("a", cp.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-trap")...)
			s.waitFor("start", "a", time.Minute)
			b := s.klock("b", cp.Kubeconfig, args, s.probe("b", "-sleep", "300ms")...)
			c := s.klock("c", cp.Kubeconfig, args, s.probe("c", "-sleep", "300ms")...)
			time.Sleep(time.Second) // let b and c start watching

			outage := bounce(t, tc.component, tc.kill)
			if outage > tm.renew-tm.retry {
				t.Fatalf("the restart took %s, longer than this scenario's renew deadline allows (%s): it tests a restart the holder should ride out", ms(outage), tm.renew-tm.retry)
			}
			// Two renewals after the restart.
			time.Sleep(2*tm.retry + time.Second)
			if !a.running() {
				t.Fatalf("the holder exited %d during the restart; its output:\n%s", a.code, a.output())
			}
			if e, ok := find(s.events(), "signal", "a"); ok {
				t.Errorf("the holder's command was signalled (%v) during a %s outage shorter than the renew deadline", e.Fields, ms(outage))
			}

			a.signal(t, syscall.SIGTERM) // forwarded: the probe exits 115
			a.expectExit(t, 30*time.Second, 115, "the command's answer to a forwarded TERM: the lock was held throughout")
			b.expectExit(t, time.Minute, 0, "b ran its command")
			c.expectExit(t, time.Minute, 0, "c ran its command")
			events := s.events()
			checkExclusion(t, events)
			handoffs := handoffTimes(t, s, events, "a", "b", "c")
			for i, h := range handoffs {
				atMost(t, fmt.Sprintf("handoff %d after the restart", i+1), h, tm.retry+slack)
			}
			report(t, "d. "+tc.name+" while 1 holds, 2 wait", "holder kept the lock; the waiters got it in turn",
				fmt.Sprintf("outage < renew deadline %s; handoff ≤ retry %s (+%s slack)", tm.renew, tm.retry, slack),
				fmt.Sprintf("outage %s; handoffs %s, %s", ms(outage), ms(handoffs[0]), ms(handoffs[1])))
		})
	}
}

// bounce stops c with SIGTERM, or kills it, and starts it again, and
// returns how long it was away. It leaves c running, also when it fails t.
func bounce(t *testing.T, c framework.Component, kill bool) time.Duration {
	t.Helper()
	down := time.Now()
	var err error
	if kill {
		err = cp.KillComponent(c)
	} else {
		err = cp.StopComponent(c)
	}
	if err != nil {
		// envtest kills what does not stop in time: start it all the same.
		t.Errorf("stopping %s: %v", c, err)
	}
	if err := cp.StartComponent(c); err != nil {
		t.Fatalf("starting %s again: %v", c, err)
	}
	return time.Since(down)
}

// handoffTimes returns how long each handoff took, in the order the
// waiters started: from the end of first's command to the start of the
// waiter that started first, from its end to the start of the next, and
// so on.
func handoffTimes(t *testing.T, s *scenario, events []event, first string, waiters ...string) []time.Duration {
	t.Helper()
	prevEnd := s.must(events, "end", first).At
	var starts []event
	for _, w := range waiters {
		starts = append(starts, s.must(events, "start", w))
	}
	var out []time.Duration
	for len(starts) > 0 {
		next := 0
		for i := range starts {
			if starts[i].At.Before(starts[next].At) {
				next = i
			}
		}
		out = append(out, starts[next].At.Sub(prevEnd))
		prevEnd = s.must(events, "end", starts[next].Name).At
		starts = append(starts[:next], starts[next+1:]...)
	}
	return out
}

// d. etcd is stopped for longer than the renew deadline while one klock
// holds the lock and one waits.
//
// What klock does: the API server cannot write, so the holder's renewals
// fail until its renew deadline, counted from its last successful renewal
// (before the stop), has passed; then it reports the lock lost, sends TERM
// to its command, does not try to release, and exits 124. The waiter keeps
// reading the Lease every retry period; nobody can write while etcd is
// down, so it takes the Lease over only after etcd is back, and since the
// record it saw last is older than the lease duration by then, at once.
// Asserted: the holder's command is signalled within the renew deadline
// (+ slack) of the stop, klock exits 124, the waiter gets the lock within
// a lease duration and a retry period (+ slack) of etcd's return, and the
// exclusion invariant holds.
func TestEtcdOutage(t *testing.T) {
	fullOnly(t)
	s := newScenario(t)
	tm := timings{lease: 4 * time.Second, renew: 2 * time.Second, retry: 500 * time.Millisecond}
	args := append([]string{"-l", "outage", "--debug"}, tm.args()...)
	a := s.klock("a", cp.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-trap")...)
	s.waitFor("start", "a", time.Minute)
	b := s.klock("b", cp.Kubeconfig, args, s.probe("b", "-sleep", "300ms")...)
	time.Sleep(time.Second) // let b start watching

	stopped := time.Now()
	if err := cp.StopComponent(framework.Etcd); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = cp.StartComponent(framework.Etcd)
		}
	})
	// Down for the renew deadline and then some more.
	time.Sleep(time.Until(stopped.Add(tm.renew + 3*time.Second)))
	aRunning := a.running()
	if err := cp.StartComponent(framework.Etcd); err != nil {
		t.Fatalf("starting etcd again: %v", err)
	}
	restarted = true
	back := time.Now()
	if aRunning {
		t.Errorf("the holder still ran %s after etcd stopped, past its renew deadline of %s", ms(back.Sub(stopped)), tm.renew)
	}
	a.expectExit(t, 30*time.Second, 124, "the lock was lost")
	b.expectExit(t, time.Minute, 0, "b ran its command")

	events := s.events()
	checkExclusion(t, events)
	sig, ok := find(events, "signal", "a")
	if !ok || sig.Fields[0] != "terminated" {
		t.Fatalf("the holder's command was not sent TERM; the probe log:\n%s", dump(events))
	}
	signalled := sig.At.Sub(stopped)
	atMost(t, "signalling the holder's command after etcd stopped", signalled, tm.renew+slack)
	bStart := s.must(events, "start", "b")
	if bStart.At.Before(back) {
		t.Errorf("b started at %s, before etcd was back at %s", bStart.At.Format(time.StampMicro), back.Format(time.StampMicro))
	}
	took := bStart.At.Sub(back)
	atMost(t, "the takeover after etcd came back", took, tm.lease+tm.retry+slack)
	report(t, "d. etcd stopped for renew deadline + 3s while 1 holds, 1 waits",
		"holder's command got TERM, klock exited 124; the waiter took over after etcd returned",
		fmt.Sprintf("TERM ≤ renew deadline %s after the stop; takeover ≤ lease + retry = %s after etcd returned (+%s slack)", tm.renew, tm.lease+tm.retry, slack),
		fmt.Sprintf("TERM %s after the stop; takeover %s after etcd returned", ms(signalled), ms(took)))
}
