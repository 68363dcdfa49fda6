package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/klock-io/klock/test/framework"
)

// faultProxy starts a FaultProxy to the control plane, with the
// administrator's credentials upstream, for the scenario's klocks.
func (s *scenario) faultProxy(name string) *framework.FaultProxy {
	s.t.Helper()
	p, err := framework.NewFaultProxy(cp.Config, s.path(name+".kubeconfig"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(p.Close)
	return p
}

// lastWrite returns the last write the API server accepted through p.
func lastWrite(t *testing.T, p *framework.FaultProxy) framework.Call {
	t.Helper()
	w := p.Writes()
	if len(w) == 0 {
		t.Fatal("no write went through the proxy")
	}
	return w[len(w)-1]
}

// c. The holder can no longer reach the API server (every connection
// through its proxy is cut and new ones refused), while a waiter still
// can. The holder's renewals fail; when its renew deadline, counted from
// its last successful renewal, has passed, it sends TERM to its command
// and exits 124 once the command has exited. The waiter counts the lease
// duration from when it saw that renewal, which was no earlier than the
// renewal was sent, so it may take over only after the holder's command
// was told to stop. Asserted: TERM before the last renewal sent + the
// lease duration, within the renew deadline (+ slack) of it; exit 124; the
// waiter starts after the holder's command ended, no earlier than a lease
// duration after the last renewal was sent and within a lease duration
// and a retry period (+ slack) of it.
func TestPartitionedHolder(t *testing.T) {
	s := newScenario(t)
	// A lease duration well above the renew deadline: the holder must stop
	// its command in the gap between them.
	tm := timings{lease: 3 * time.Second, renew: 1500 * time.Millisecond, retry: 300 * time.Millisecond}
	args := append([]string{"-l", "partition", "--debug"}, tm.args()...)
	proxy := s.faultProxy("a")
	a := s.klock("a", proxy.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-trap")...)
	s.waitFor("start", "a", time.Minute)
	b := s.klock("b", cp.Kubeconfig, args, s.probe("b")...)
	time.Sleep(time.Second) // b watches; a renews through the proxy

	proxy.Cut()
	cut := time.Now()
	a.expectExit(t, 30*time.Second, 124, "the lock was lost")
	b.expectExit(t, 30*time.Second, 0, "b ran its command")
	events := s.events()
	checkExclusion(t, events)

	last := lastWrite(t, proxy)
	if last.Sent.After(cut) {
		t.Fatalf("a write went through after the cut: %+v", last)
	}
	sig := s.must(events, "signal", "a")
	if sig.Fields[0] != "terminated" {
		t.Errorf("a's command got %s, want TERM", sig.Fields[0])
	}
	expiry := last.Sent.Add(tm.lease)
	if !sig.At.Before(expiry) {
		t.Errorf("a's command got TERM at %s, not before the lease could expire for b (%s: the last renewal sent + %s)",
			sig.At.Format(time.StampMicro), expiry.Format(time.StampMicro), tm.lease)
	}
	signalled := sig.At.Sub(last.Sent)
	atMost(t, "TERM after the last renewal sent", signalled, tm.renew+slack)

	aEnd, bStart := s.must(events, "end", "a"), s.must(events, "start", "b")
	if bStart.At.Before(aEnd.At) {
		t.Errorf("b started at %s, before a's command ended at %s", bStart.At.Format(time.StampMicro), aEnd.At.Format(time.StampMicro))
	}
	took := bStart.At.Sub(last.Sent)
	if took < tm.lease {
		t.Errorf("b took over %s after a's last renewal was sent, before the lease duration %s", ms(took), tm.lease)
	}
	atMost(t, "the takeover after a's last renewal", took, tm.lease+tm.retry+slack)
	report(t, "c. holder cut off from the API server (proxy cut), 1 waiter",
		"holder's command got TERM, klock exited 124; the waiter took over after the command ended",
		fmt.Sprintf("TERM ≤ renew deadline %s after the last renewal, before the lease %s; takeover in [lease, lease + retry %s]", tm.renew, tm.lease, tm.retry),
		fmt.Sprintf("TERM %s, takeover %s after the last renewal (%s after the command ended)", ms(signalled), ms(took), ms(bStart.At.Sub(aEnd.At))))
}

// c. The holder's API server is slow: every request of the holder's waits
// in the proxy before it is forwarded. A delay well below the retry period
// costs nothing: each renewal takes longer, but succeeds, and the next one
// is due a retry period after the last one was sent. A delay longer than
// the renew deadline lets no renewal through in time, and the holder gives
// the lock up at its renew deadline, exactly as if it were cut off: TERM,
// exit 124, and the waiter takes over after the command ended.
func TestSlowAPIServer(t *testing.T) {
	tm := timings{lease: 3 * time.Second, renew: 1500 * time.Millisecond, retry: 300 * time.Millisecond}
	for _, tc := range []struct {
		delay time.Duration
		lost  bool
	}{
		{delay: 200 * time.Millisecond},
		{delay: 2 * time.Second, lost: true},
	} {
		t.Run(tc.delay.String(), func(t *testing.T) {
			s := newScenario(t)
			args := append([]string{"-l", "slow", "--debug"}, tm.args()...)
			proxy := s.faultProxy("a")
			a := s.klock("a", proxy.Kubeconfig, args, s.probe("a", "-sleep", "4s", "-trap")...)
			s.waitFor("start", "a", time.Minute)
			b := s.klock("b", cp.Kubeconfig, args, s.probe("b")...)
			time.Sleep(time.Second) // b watches
			proxy.SetDelay(tc.delay)
			delayed := time.Now()

			want, why := 0, "the command's own status: the delay is below the retry period"
			if tc.lost {
				want, why = 124, "the lock was lost"
			}
			a.expectExit(t, 30*time.Second, want, why)
			b.expectExit(t, 30*time.Second, 0, "b ran its command")
			events := s.events()
			checkExclusion(t, events)
			sig, signalled := find(events, "signal", "a")
			if !tc.lost {
				if signalled {
					t.Errorf("a's command got %s with requests delayed by %s, below the retry period %s", sig.Fields[0], tc.delay, tm.retry)
				}
				report(t, fmt.Sprintf("c. holder's requests delayed %s", tc.delay), "holder kept the lock; its command ran to the end",
					fmt.Sprintf("no loss with a delay below the retry period %s", tm.retry), "a's command never signalled")
				return
			}
			if !signalled {
				t.Fatalf("a's command was not signalled with requests delayed by %s", tc.delay)
			}
			var last time.Time
			for _, w := range proxy.Writes() {
				if w.Sent.Before(delayed) {
					last = w.Sent
				}
			}
			signalledAfter := sig.At.Sub(last)
			atMost(t, "TERM after the last renewal sent before the delay", signalledAfter, tm.renew+slack)
			if !sig.At.Before(last.Add(tm.lease)) {
				t.Errorf("a's command got TERM %s after its last renewal was sent, not before the lease %s could expire", ms(signalledAfter), tm.lease)
			}
			report(t, fmt.Sprintf("c. holder's requests delayed %s", tc.delay), "holder's command got TERM, klock exited 124; the waiter took over after the command ended",
				fmt.Sprintf("TERM ≤ renew deadline %s after the last renewal, before the lease %s", tm.renew, tm.lease),
				fmt.Sprintf("TERM %s after the last renewal", ms(signalledAfter)))
		})
	}
}
