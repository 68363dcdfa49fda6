package integration

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/test/framework"
)

// fastConfig has the short timings of the CLI tests.
func fastConfig(ns, name, identity string) klock.Config {
	return klock.Config{
		Name: name, Namespace: ns, Identity: identity,
		LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 300 * time.Millisecond,
	}
}

func newLock(t *testing.T, config *rest.Config, cfg klock.Config) *klock.Lock {
	t.Helper()
	l, err := klock.NewForConfig(config, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// insiders counts the holders inside a critical section at once, and the
// most there ever were: an overlap detector.
type insiders struct{ now, most atomic.Int32 }

func (c *insiders) enter() {
	n := c.now.Add(1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
}

func (c *insiders) leave() { c.now.Add(-1) }

// runInside runs a 10ms critical section under l, times times, noting who
// is inside and counting the runs.
func runInside(t *testing.T, l *klock.Lock, times int, inside *insiders, runs *atomic.Int32) {
	for range times {
		err := l.Run(context.Background(), func(context.Context) error {
			inside.enter()
			time.Sleep(10 * time.Millisecond)
			inside.leave()
			runs.Add(1)
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
}

// acquireAndRelease acquires l in the background and releases at once.
func acquireAndRelease(ctx context.Context, l *klock.Lock) <-chan error {
	got := make(chan error, 1)
	go func() {
		h, err := l.Acquire(ctx)
		if err == nil {
			err = h.Release(ctx)
		}
		got <- err
	}()
	return got
}

// awaitNil waits for a nil error from got.
func awaitNil(t *testing.T, got <-chan error, what string) {
	t.Helper()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
	}
}

func TestEngineRunExcludesGoroutines(t *testing.T) {
	ns := namespace(t)
	var inside insiders
	var runs atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			runInside(t, newLock(t, cp.Config, fastConfig(ns, "in-process", "")), 3, &inside, &runs)
		})
	}
	wg.Wait()
	if runs.Load() != 18 || inside.most.Load() != 1 {
		t.Errorf("%d runs with at most %d inside at once, want 18 with 1", runs.Load(), inside.most.Load())
	}
}

func TestEngineTryAcquireReportsTheHolder(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	a := newLock(t, cp.Config, fastConfig(ns, "try", "a"))
	b := newLock(t, cp.Config, fastConfig(ns, "try", "b"))
	h, err := a.TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.TryAcquire(ctx)
	var held *klock.HeldError
	if !errors.Is(err, klock.ErrHeld) || !errors.As(err, &held) || held.Holder != "a" {
		t.Fatalf("b.TryAcquire: %v, want a HeldError naming a", err)
	}
	if _, err := a.TryAcquire(ctx); err == nil {
		t.Error("a second TryAcquire on a Lock that holds succeeded")
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	h2, err := b.TryAcquire(ctx)
	if err != nil {
		t.Fatalf("b.TryAcquire after release: %v", err)
	}
	if h2.Token() <= h.Token() {
		t.Errorf("token %d after %d", h2.Token(), h.Token())
	}
	_ = h2.Release(ctx)
}

func TestEngineWaiterWakesOnRelease(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	// Default timings: without the release, the waiter would wait 15s.
	a := newLock(t, cp.Config, klock.Config{Name: "wake", Namespace: ns})
	b := newLock(t, cp.Config, klock.Config{Name: "wake", Namespace: ns})
	h, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := acquireAndRelease(ctx, b)
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("b acquired while a held the lease: %v", err)
	default:
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	awaitNil(t, got, "b acquiring after a's release")
}

func TestEngineRunContextEndsOnLoss(t *testing.T) {
	ns := namespace(t)
	proxy, err := newAPIProxy(t)
	if err != nil {
		t.Fatal(err)
	}
	via := rest.CopyConfig(cp.Config)
	via.Host = "https://" + proxy.Addr()
	l := newLock(t, via, fastConfig(ns, "loss", "a"))
	other := newLock(t, cp.Config, fastConfig(ns, "loss", "b"))

	var stoppedAt time.Time
	started := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- l.Run(context.Background(), func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			stoppedAt = time.Now()
			return context.Cause(ctx)
		})
	}()
	<-started
	proxy.Cut()
	h, err := other.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	takenAt := time.Now()
	defer h.Release(context.Background())
	err = <-errc
	if !errors.Is(err, klock.ErrLost) {
		t.Fatalf("Run returned %v, want ErrLost", err)
	}
	if !stoppedAt.Before(takenAt) {
		t.Errorf("the lease was taken over at %s, before Run's context ended at %s", takenAt, stoppedAt)
	}
}

func TestEngineDisableCreate(t *testing.T) {
	ns := namespace(t)
	cfg := fastConfig(ns, "absent", "a")
	cfg.DisableCreate = true
	_, err := newLock(t, cp.Config, cfg).TryAcquire(context.Background())
	if err == nil {
		t.Fatal("TryAcquire created or took a Lease it was told not to create")
	}
	if _, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), "absent", metav1.GetOptions{}); err == nil {
		t.Error("the Lease was created")
	}
}

// A klock holder and a client-go leader election contender exclude each
// other on the same Lease, both ways, and each sees the other's release.
func TestInteropWithClientGoLeaderElection(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	elect := func(ctx context.Context, identity string, leading chan<- time.Time) {
		lock := &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: "interop", Namespace: ns},
			Client:     cp.Client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
		}
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true,
			LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 300 * time.Millisecond,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { leading <- time.Now() },
				OnStoppedLeading: func() {},
			},
		})
	}

	t.Run("klock holds, client-go waits for its release", func(t *testing.T) {
		h, err := newLock(t, cp.Config, fastConfig(ns, "interop", "klock")).Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		electCtx, cancel := context.WithCancel(ctx)
		leading := make(chan time.Time, 1)
		done := make(chan struct{})
		go func() { elect(electCtx, "elector", leading); close(done) }()
		time.Sleep(3 * time.Second) // longer than the lease duration: klock renews
		select {
		case <-leading:
			t.Fatal("client-go became leader while klock held the lease")
		default:
		}
		released := time.Now()
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-leading:
			if at.Before(released) {
				t.Errorf("client-go led at %s, before klock released at %s", at, released)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("client-go did not lead after klock released")
		}
		cancel()
		<-done
	})

	t.Run("client-go holds, klock waits for its release", func(t *testing.T) {
		electCtx, cancel := context.WithCancel(ctx)
		leading := make(chan time.Time, 1)
		done := make(chan struct{})
		go func() { elect(electCtx, "elector", leading); close(done) }()
		select {
		case <-leading:
		case <-time.After(10 * time.Second):
			t.Fatal("client-go did not lead")
		}
		l := newLock(t, cp.Config, fastConfig(ns, "interop", "klock"))
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second) // longer than the lease duration
		_, err := l.Acquire(wctx)
		wcancel()
		var held *klock.HeldError
		if !errors.As(err, &held) || held.Holder != "elector" {
			t.Fatalf("Acquire while client-go leads: %v, want held by elector", err)
		}
		got := acquireAndRelease(ctx, l)
		cancel() // ReleaseOnCancel clears the holder
		<-done
		awaitNil(t, got, "klock acquiring after client-go released")
	})
}

func TestEngineRequestCounts(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	for _, tc := range []struct {
		order klock.Order
		// Requests to take a free Lease, and of a waiter in 3s while the
		// holder renews ten times: a read of each Lease and a watch of
		// each, and with a queue a write that takes a place in it.
		take, wait int64
	}{
		{order: klock.OrderAny, take: 2, wait: 2},
		{order: klock.OrderFIFO, take: 3, wait: 5},
	} {
		t.Run(string(tc.order), func(t *testing.T) {
			name := "counted-" + string(tc.order)
			config := func(identity string) klock.Config {
				cfg := fastConfig(ns, name, identity)
				cfg.Order = tc.order
				return cfg
			}
			var n atomic.Int64
			l := newLock(t, framework.CountRequests(cp.Config, &n), config("a"))

			n.Store(0)
			h, err := l.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := n.Load(); got != tc.take {
				t.Errorf("a missing Lease: %d requests before holding, want %d", got, tc.take)
			}
			n.Store(0)
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if got := n.Load(); got != 1 {
				t.Errorf("%d requests to release, want 1", got)
			}

			n.Store(0)
			if h, err = l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			if got := n.Load(); got != tc.take {
				t.Errorf("a released Lease: %d requests before holding, want %d", got, tc.take)
			}
			_ = h.Release(ctx)

			h, err = newLock(t, cp.Config, config("holder")).Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n.Store(0)
			wctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { _, err := l.Acquire(wctx); done <- err }()
			time.Sleep(3 * time.Second)
			got := n.Load()
			cancel()
			if err := <-done; !errors.Is(err, klock.ErrHeld) {
				t.Errorf("waiter ended with %v, want ErrHeld", err)
			}
			if got != tc.wait {
				t.Errorf("the waiter made %d requests, want %d", got, tc.wait)
			}
			_ = h.Release(ctx)
		})
	}
}
