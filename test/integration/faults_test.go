package integration

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/klock-io/klock/klock"
)

// loseAnswers returns a copy of config whose requests reach the API server
// as usual, but whose answer is thrown away, as a broken connection would
// lose it, for the next n requests that match.
func loseAnswers(config *rest.Config, n *atomic.Int32, match func(*http.Request) bool) *rest.Config {
	c := rest.CopyConfig(config)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTrip(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil && match(r) && n.Add(-1) >= 0 {
				_ = resp.Body.Close()
				return nil, errors.New("connection reset after the request was sent (injected)")
			}
			return resp, err
		})
	})
	return c
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// leaseWrite matches a create or update of a Lease.
func leaseWrite(r *http.Request) bool {
	return (r.Method == http.MethodPut || r.Method == http.MethodPost) && strings.Contains(r.URL.Path, "/leases")
}

// A committed acquisition or renewal whose answer was lost must still be
// recognised as this holder's own, so that Release gives the Lease back
// and the next waiter need not wait for it to expire. The API server
// returns MicroTime in microseconds: the comparison is only tested
// honestly through a real round trip.
func TestLostAnswersLeaveNoStuckLease(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	// A long lease: a Lease left held would keep the next waiter out for
	// a minute, far beyond the few seconds this test waits.
	cfg := klock.Config{Namespace: ns, LeaseDuration: time.Minute, RenewDeadline: 5 * time.Second, RetryPeriod: 300 * time.Millisecond}

	for i, tc := range []struct {
		name        string
		lose        int32 // writes whose answer is lost, from the acquisition on
		loseRelease bool
	}{
		{name: "the acquisition's answer", lose: 1},
		{name: "the acquisition's and two renewals' answers", lose: 3},
		{name: "the release's answer", loseRelease: true},
		{name: "every answer for a while, then the release's", lose: 6, loseRelease: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "lost-" + string(rune('a'+i))
			var n atomic.Int32
			n.Store(tc.lose)
			c := cfg
			c.Name, c.Identity = name, "flaky"
			h, err := newLock(t, loseAnswers(cp.Config, &n, leaseWrite), c).Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if h.Reentrant() {
				t.Error("its own acquisition was taken for another process's under the same identity")
			}
			// Let renewals run (and lose their answers) for a while.
			time.Sleep(1500 * time.Millisecond)
			if err := h.Err(); err != nil {
				t.Fatalf("lost the lease: %v", err)
			}
			if tc.loseRelease {
				n.Store(1)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatalf("release: %v", err)
			}
			if got := holder(getLease(t, ns, name)); got != "" {
				t.Errorf("holder after release = %q, want released", got)
			}
			next := c
			next.Identity = "next"
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			h2, err := newLock(t, cp.Config, next).Acquire(tctx)
			if err != nil {
				t.Fatalf("the next contender could not acquire: %v", err)
			}
			_ = h2.Release(ctx)
		})
	}
}

// A contender that has just started must recognise a Lease whose holder
// died longer ago than the lease duration, even if it waits less than a
// lease duration itself (klock -w 2s -E 0): staleness is judged on the
// API server's clock alone.
func TestFreshContenderTakesAnAbandonedLease(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	leases := cp.Client.CoordinationV1().Leases(ns)
	abandoned := func(name string, seconds int32) {
		t.Helper()
		now := metav1.NewMicroTime(time.Now())
		if _, err := leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To("dead"), LeaseDurationSeconds: ptr.To(seconds),
				AcquireTime: &now, RenewTime: &now, LeaseTransitions: ptr.To(int32(0)),
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	abandoned("stale", 1)
	abandoned("live", 30)
	// Past the 1s duration plus the margin for the server's whole-second
	// timestamps.
	time.Sleep(4 * time.Second)

	h, err := newLock(t, cp.Config, klock.Config{Name: "stale", Namespace: ns}).TryAcquire(ctx)
	if err != nil {
		t.Fatalf("a Lease abandoned 3s past its 1s duration was not taken at once: %v", err)
	}
	_ = h.Release(ctx)

	// One whose duration has not passed stays held, however fresh the
	// contender.
	_, err = newLock(t, cp.Config, klock.Config{Name: "live", Namespace: ns}).TryAcquire(ctx)
	if !errors.Is(err, klock.ErrHeld) {
		t.Errorf("a Lease 4s into its 30s duration: got %v, want ErrHeld", err)
	}
}

// Giving up waiting while the API server is unreachable is an error
// (exit 125), not a conflict (-E, which users set to 0 for "skipped").
func TestGivingUpWhileUnreachableIsNoConflict(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	h, err := newLock(t, cp.Config, fastConfig(ns, "unreachable", "holder")).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(ctx)
	p, err := newAPIProxy(t)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(cp.Config)
	cfg.Host = "https://" + p.Addr()
	waiter := newLock(t, cfg, fastConfig(ns, "unreachable", "waiter"))
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := waiter.Acquire(wctx); done <- err }()
	time.Sleep(time.Second) // found held, now waiting
	p.Cut()
	err = <-done
	if errors.Is(err, klock.ErrHeld) || err == nil {
		t.Errorf("gave up with %v while the API server was unreachable, want an API error, not ErrHeld", err)
	}
}
