package chaos

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/klock"
)

// skewedClock is a machine's clock that is off by offset. time.Now keeps
// its monotonic reading, as on a real machine with a wrong clock: only the
// wall times it gives, those klock writes into the Lease, are off.
type skewedClock struct{ offset time.Duration }

func (c skewedClock) Now() time.Time                  { return time.Now().Add(c.offset) }
func (c skewedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// eventLog records, for contenders in this process, the events a probe
// would: who was inside the lock from when to when, with which token.
type eventLog struct {
	mu     sync.Mutex
	events []event
}

func (l *eventLog) add(kind, name string, fields ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, event{Kind: kind, Name: name, At: time.Now(), Fields: fields})
}

func (l *eventLog) all() []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]event(nil), l.events...)
}

// g. Contenders whose clocks are an hour fast and an hour slow, with the
// engine in process (Config.Clock). klock writes its own clock's times
// into the Lease, but never judges expiry by comparing another machine's
// time with its own: a waiter counts the lease duration on its own clock
// from when it saw the record change. So the skew changes nothing.
//
// Asserted: contenders an hour apart exclude each other (tokens strictly
// increasing); and when a holder stops renewing (its connection is cut
// through a proxy, and it never releases), the other takes over no
// earlier than a lease duration after the holder's last renewal was sent,
// and no later than a lease duration and a retry period (+ slack) after it
// was answered, in both directions of the skew: a fast clock must not take
// over early, a slow one must not wait an extra two hours.
func TestClockSkew(t *testing.T) {
	tm := fast
	config := func(ns, name string, offset time.Duration) klock.Config {
		return klock.Config{
			Name: name, Namespace: ns, Clock: skewedClock{offset},
			LeaseDuration: tm.lease, RenewDeadline: tm.renew, RetryPeriod: tm.retry,
		}
	}
	newLock := func(t *testing.T, rc *rest.Config, cfg klock.Config) *klock.Lock {
		t.Helper()
		l, err := klock.NewForConfig(rc, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	t.Run("exclusion", func(t *testing.T) {
		s := newScenario(t)
		const rounds = 5
		var log eventLog
		var inside atomic.Int32
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		for i, offset := range []time.Duration{time.Hour, -time.Hour, time.Hour, -time.Hour} {
			l := newLock(t, cp.Config, config(s.ns, "skewed", offset))
			wg.Go(func() {
				for r := range rounds {
					h, err := l.Acquire(ctx)
					if err != nil {
						t.Errorf("contender %d (clock %+v): %v", i, offset, err)
						return
					}
					name := fmt.Sprintf("c%d-%d", i, r)
					log.add("start", name, strconv.FormatUint(h.Token(), 10), l.Config().Identity)
					if n := inside.Add(1); n > 1 {
						log.add("overlap", name, "in-process")
					}
					time.Sleep(50 * time.Millisecond)
					inside.Add(-1)
					select {
					case <-h.Lost():
						t.Errorf("%s lost the lock while inside: %v", name, h.Err())
					default:
					}
					log.add("end", name)
					if err := h.Release(ctx); err != nil {
						t.Errorf("%s: releasing: %v", name, err)
					}
				}
			})
		}
		wg.Wait()
		events := log.all()
		checkExclusion(t, events)
		if got := countKind(events, "start"); got != 4*rounds {
			t.Errorf("%d acquisitions, want %d", got, 4*rounds)
		}
		var longest time.Duration
		if gaps := handoffGaps(events); len(gaps) > 0 {
			longest = gaps[len(gaps)-1]
		}
		report(t, "g. 4 in-process contenders, clocks +1h, −1h, +1h, −1h", fmt.Sprintf("%d acquisitions, no overlap, tokens increasing", countKind(events, "start")),
			"0 overlaps", "longest handoff "+ms(longest))
	})

	for _, tc := range []struct {
		name          string
		holder, taker time.Duration
	}{
		{name: "holder +1h, taker −1h", holder: time.Hour, taker: -time.Hour},
		{name: "holder −1h, taker +1h", holder: -time.Hour, taker: time.Hour},
	} {
		t.Run("takeover, "+tc.name, func(t *testing.T) {
			s := newScenario(t)
			proxy := s.faultProxy("holder")
			viaProxy, err := proxy.Config()
			if err != nil {
				t.Fatal(err)
			}
			var log eventLog
			holderLock := newLock(t, viaProxy, config(s.ns, "skewed", tc.holder))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			h, err := holderLock.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			log.add("start", "holder", strconv.FormatUint(h.Token(), 10), holderLock.Config().Identity)

			takerLock := newLock(t, cp.Config, config(s.ns, "skewed", tc.taker))
			// Bounded, so that a taker that waits for the hours of skew
			// fails the test instead of hanging it.
			takerCtx, takerCancel := context.WithTimeout(ctx, 3*tm.lease+slack)
			defer takerCancel()
			taken := make(chan *klock.Hold, 1)
			go func() {
				th, err := takerLock.Acquire(takerCtx)
				if err != nil {
					t.Errorf("the taker (clock %+v) did not get the lock: %v", tc.taker, err)
					close(taken)
					return
				}
				log.add("start", "taker", strconv.FormatUint(th.Token(), 10), takerLock.Config().Identity)
				taken <- th
			}()
			lost := make(chan time.Time, 1)
			go func() {
				<-h.Lost()
				log.add("end", "holder")
				lost <- time.Now()
			}()
			time.Sleep(time.Second) // the holder renews, the taker watches
			// The holder stops renewing: it never releases, and its
			// renewals no longer reach the API server.
			proxy.Cut()
			th, ok := <-taken
			if !ok {
				return
			}
			takenAt := time.Now()
			defer func() { _ = th.Release(context.Background()) }()

			last := lastWrite(t, proxy)
			events := log.all()
			checkExclusion(t, events)
			var lostAt time.Time
			select {
			case lostAt = <-lost:
			case <-time.After(tm.renew + slack):
				t.Fatalf("the holder did not report the lock lost within its renew deadline (+ slack) after the cut")
			}
			if !lostAt.Before(takenAt) {
				t.Errorf("the holder learnt of the loss at %s, after the taker took over at %s", lostAt.Format(time.StampMicro), takenAt.Format(time.StampMicro))
			}
			took := takenAt.Sub(last.Sent)
			if took < tm.lease {
				t.Errorf("the taker took over %s after the holder's last renewal was sent, before the lease duration %s", ms(took), tm.lease)
			}
			atMost(t, "the takeover after the holder's last renewal was answered", takenAt.Sub(last.Answered), tm.lease+tm.retry+slack)
			report(t, "g. takeover, "+tc.name, "the holder reported the loss first; the taker took over at expiry",
				fmt.Sprintf("takeover in [lease %s, lease + retry %s] after the last renewal (+%s slack)", tm.lease, tm.lease+tm.retry, slack),
				fmt.Sprintf("takeover %s after the last renewal was sent", ms(took)))
		})
	}
}
