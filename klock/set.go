package klock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// A lock with more than one holder, or whose waiters queue, is a set of
// Leases: its holder slots (SlotNames), each held like a mutex's one Lease
// by a Lock of its own (the first slot is the Lock itself), and its queue
// (QueueName). Acquiring it watches them all and, when a slot is free and
// it is this contender's turn, takes that slot. Safety (never more holders
// than slots) rests on each slot alone, as a mutex's does; the queue only
// decides who tries, so a contender that ignores it (client-go's LeaseLock,
// an older klock, order any) still excludes, and may only jump the line.

// isSet reports whether the lock is more than one Lease.
func (l *Lock) isSet() bool { return len(l.slots) > 1 || l.queue != nil }

// slotLocks returns the Locks of the holder slots: l alone for a mutex.
func (l *Lock) slotLocks() []*Lock {
	if l.slots == nil {
		return []*Lock{l}
	}
	return l.slots
}

// lockName is the name of the lock, which is its first slot's.
func (l *Lock) lockName() string { return l.cfg.Name }

// initSet makes the slot Locks and the queue a counting or queued lock
// needs.
func (l *Lock) initSet() {
	l.slots = []*Lock{l}
	for _, name := range SlotNames(l.cfg.Name, l.cfg.MaxHolders)[1:] {
		cfg := l.cfg
		cfg.Name = name
		l.slots = append(l.slots, &Lock{
			cfg: cfg, leases: l.leases, lockOf: l.cfg.Name,
			log: cfg.Logger.WithValues("lease", cfg.Namespace+"/"+name, "identity", cfg.Identity),
		})
	}
	if l.cfg.Order == OrderFIFO {
		l.queue = &queue{lock: l, name: QueueName(l.cfg.Name)}
	}
}

// source is one Lease of the set as this contender follows it.
type source struct {
	name    string
	lease   *coordinationv1.Lease
	age     time.Duration
	current bool
	w       *leaseWatch
}

// acquireSet acquires a slot of a counting or queued lock; with wait false
// it makes one attempt, as TryAcquire does.
func (l *Lock) acquireSet(ctx context.Context, wait bool) (*Hold, error) {
	id := l.cfg.Identity
	q := l.queue
	srcs := make([]*source, 0, len(l.slots)+1)
	for _, s := range l.slots {
		srcs = append(srcs, &source{name: s.cfg.Name})
	}
	if q != nil {
		srcs = append(srcs, &source{name: q.name})
	}
	for _, s := range srcs {
		s.w = &leaseWatch{leases: l.leases, name: s.name}
		defer s.w.reset()
	}
	qs := srcs[len(srcs)-1] // the queue's, when there is one
	if q != nil {
		// What an earlier acquisition saw of the waiters' renewals says
		// nothing of those queued since: judge them afresh.
		q.seen = nil
	}
	var (
		joined    bool // this contender has a place in the queue
		tried     bool // it asked for one, maybe with its answer lost
		held      *HeldError
		lastErr   error
		answered  bool
		unreached = time.Now()
		wake      = time.NewTimer(0)
		beat      = time.NewTimer(time.Hour)
		resync    = time.NewTicker(resyncPeriod)
		acquired  bool
	)
	beat.Stop()
	defer wake.Stop()
	defer beat.Stop()
	defer resync.Stop()
	defer func() {
		if (joined || tried) && !acquired && !errors.Is(context.Cause(ctx), ErrKeepPlace) {
			// A waiter that gives up leaves its place at once. Best
			// effort: a place left behind is dropped after QueueTTL.
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RenewDeadline)
			defer cancel()
			if err := q.leave(lctx, nil); err != nil {
				l.log.V(1).Info("Could not leave the queue", "err", err.Error())
			}
		}
	}()

	for {
		failed := false
		for _, s := range srcs {
			if s.current {
				continue
			}
			lease, age, err := l.getNamed(ctx, s.name)
			if err != nil {
				if permanent(err) || !wait || !answered && time.Since(unreached) >= l.cfg.RenewDeadline {
					return nil, err
				}
				lastErr, held, failed = err, nil, true
				break
			}
			answered = true
			s.lease, s.age, s.current = lease, age, true
		}
		next := l.cfg.RetryPeriod
		if !failed {
			now := l.cfg.Clock.Now()
			for i, s := range l.slots {
				s.obs.observe(srcs[i].lease, now, srcs[i].age)
				srcs[i].age = 0
			}
			if q != nil {
				if err := q.observe(qs.lease, now, qs.age); err != nil {
					return nil, err
				}
				qs.age = 0
				if joined && !q.has(id) {
					// Our place is gone: dropped by another waiter that
					// took us for dead (we could not renew it in time).
					// Take a new one, at the back.
					joined = false
				}
			}
			if err := l.checkCount(ctx, srcs, now); err != nil {
				return nil, err
			}

			var holders []string
			free, ours := []int{}, -1
			earliest := time.Time{}
			for i, s := range l.slots {
				switch s.obs.state(id, now) {
				case stateMissing, stateFree:
					free = append(free, i)
				case stateOurs:
					ours = i
				case stateHeld:
					holders = append(holders, s.obs.record.holder)
					if e := s.obs.expiry(); earliest.IsZero() || e.Before(earliest) {
						earliest = e
					}
				}
			}
			target := -1
			var line, abandoned []string
			switch {
			case ours >= 0:
				target = ours // re-entrant: join the process under our identity
			case q == nil:
				if len(free) > 0 {
					target = free[0]
				}
			default:
				line, abandoned = q.line(id, holders, now)
				pos := slices.Index(line, id)
				if pos < 0 {
					pos = len(line)
				}
				if pos < len(free) {
					// Waiter k of those whose turn it is tries the k-th free
					// slot, so that they do not all race for the first.
					target = free[pos]
				}
				if a := q.nextAbandon(line, id); !a.IsZero() && (earliest.IsZero() || a.Before(earliest)) {
					earliest = a
				}
			}
			lastErr = nil
			if target >= 0 {
				h, err := l.slots[target].attempt(ctx, srcs[target].lease, 0)
				var other *HeldError
				switch {
				case err == nil:
					if err := l.recheckCount(ctx, h); err != nil {
						return nil, err
					}
					for i, s := range l.slots {
						if i != target {
							s.abandon() // a write of ours there may have committed late
						}
					}
					acquired = true
					l.leaveAfterAcquiring(ctx, h, joined, abandoned)
					if q != nil && l.cfg.DeleteOnRelease {
						leave := h.leaveQueue
						h.leaveQueue = func(ctx context.Context) {
							if leave != nil {
								leave(ctx)
							}
							q.deleteIfEmpty(ctx)
						}
					}
					return h, nil
				case errors.Is(err, errConflict):
					srcs[target].current = false // somebody else won: see who
					continue
				case errors.As(err, &other):
				case permanent(err):
					return nil, err
				default:
					if !wait {
						return nil, err
					}
					lastErr, srcs[target].current, held = err, false, nil
				}
			}
			if lastErr == nil {
				// An attempt that failed for another reason than the lock
				// being held is no verdict: giving up now is no conflict.
				held = &HeldError{Namespace: l.cfg.Namespace, Name: l.cfg.Name, Holder: strings.Join(holders, ", "), Until: earliest}
				if q != nil {
					held.Waiters = len(line)
					if slices.Contains(line, id) {
						held.Waiters--
					}
				}
			}
			if !wait {
				if held == nil {
					return nil, lastErr
				}
				return nil, held
			}
			if q != nil && !joined && lastErr == nil {
				tried = true
				if err := q.join(ctx); err != nil {
					if permanent(err) {
						return nil, err
					}
					lastErr = err
				} else {
					joined = true
					qs.lease = q.lease // what we wrote: the watch catches up from there
					beat.Reset(l.beatInterval())
					continue // the queue changed: decide again
				}
			}
			if !earliest.IsZero() && lastErr == nil {
				next = max(earliest.Sub(l.cfg.Clock.Now()), 0)
			}
			for _, s := range srcs {
				if s.current {
					s.w.follow(ctx, s.lease)
				}
				if s.w.w == nil {
					s.current, next = false, min(next, l.cfg.RetryPeriod)
				}
			}
		}
		wake.Reset(next)

		cases := make([]reflect.SelectCase, 0, len(srcs)+4)
		for _, s := range srcs {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(s.w.events())})
		}
		cases = append(cases,
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(wake.C)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(beat.C)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(resync.C)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
		)
		chosen, v, ok := reflect.Select(cases)
		switch {
		case chosen < len(srcs):
			s := srcs[chosen]
			s.w.lastEvent = time.Now()
			ev, _ := v.Interface().(watch.Event)
			switch {
			case !ok || ev.Type == watch.Error:
				if time.Since(s.w.started) < l.cfg.RetryPeriod {
					sleep(ctx, l.cfg.RetryPeriod)
				}
				s.w.reset()
				s.current = false
			case ev.Type == watch.Deleted:
				s.lease, s.current = nil, true
			case ev.Type == watch.Added || ev.Type == watch.Modified:
				if obj, isLease := ev.Object.(*coordinationv1.Lease); isLease && !older(obj, s.lease) {
					s.lease, s.current = obj, true
				}
			}
		case chosen == len(srcs): // wake: an expiry, or a retry
		case chosen == len(srcs)+1: // beat: renew our place
			if err := q.join(ctx); err != nil {
				l.log.V(1).Info("Could not renew the place in the queue; retrying", "err", err.Error())
				beat.Reset(l.cfg.RetryPeriod)
			} else {
				qs.lease = q.lease
				beat.Reset(l.beatInterval())
			}
		case chosen == len(srcs)+2:
			for _, s := range srcs {
				if time.Since(s.w.lastEvent) >= resyncPeriod {
					s.w.reset()
					s.current = false
				}
			}
		default:
			cause := context.Cause(ctx)
			if held != nil {
				held.Cause = cause
				return nil, held
			}
			if lastErr != nil {
				return nil, fmt.Errorf("gave up waiting for lock %s/%s: %w (last error: %v)", l.cfg.Namespace, l.cfg.Name, cause, lastErr)
			}
			return nil, fmt.Errorf("gave up waiting for lock %s/%s: %w", l.cfg.Namespace, l.cfg.Name, cause)
		}
	}
}

// leaveAfterAcquiring takes h's holder out of the queue, with the
// abandoned places it passed. If that fails, h leaves it on release: until
// then its place does not count, since its holder holds a slot.
func (l *Lock) leaveAfterAcquiring(ctx context.Context, h *Hold, joined bool, abandoned []string) {
	q := l.queue
	if q == nil || (!joined && !q.has(l.cfg.Identity) && len(abandoned) == 0) {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RenewDeadline)
	defer cancel()
	if err := q.leave(lctx, abandoned); err != nil {
		l.log.V(1).Info("Could not leave the queue; leaving it on release", "err", err.Error())
		h.leaveQueue = func(ctx context.Context) { _ = q.leave(ctx, nil) }
	}
}

// beatInterval is how long a waiter waits before it renews its place: a
// third of its queue TTL, less up to a quarter of that at random, so that
// waiters that came together do not all write at the same moment (and at
// most 4 times a minute with the default TTL).
func (l *Lock) beatInterval() time.Duration {
	third := l.cfg.QueueTTL / 3
	return third - rand.N(third/4+1)
}

// getNamed reads the Lease name; a missing Lease is (nil, 0, nil).
func (l *Lock) getNamed(ctx context.Context, name string) (*coordinationv1.Lease, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RenewDeadline)
	defer cancel()
	var date time.Time
	lease, err := l.leases.Get(withResponseDate(ctx, &date), name, metav1.GetOptions{})
	if err != nil {
		lease = nil
	}
	switch {
	case err != nil && apierrors.IsNotFound(err):
		return nil, 0, nil
	case err != nil && name == QueueName(l.cfg.Name):
		return nil, 0, describeQueue(err, &l.cfg, name, "get")
	case err != nil:
		c := l.cfg
		c.Name = name
		return nil, 0, describe(err, &c, "get")
	}
	return lease, serverAge(lease, date, l.cfg.Clock.Now()), nil
}

// checkCount refuses to go on when the lock is in use under another holder
// count than this contender's: a held slot, or a queue with waiters, that
// records another count; or a first slot that records a larger count, of
// which a slot this contender does not know is held. Until then every
// contender agrees on the count, and the lock never has more holders than
// any of them allows.
func (l *Lock) checkCount(ctx context.Context, srcs []*source, now time.Time) error {
	n := l.cfg.MaxHolders
	refuse := func(lease *coordinationv1.Lease, what string, m int) error {
		return permanentError{fmt.Errorf("lock %s/%s is %s with max holders %d (Lease %s), and this contender's max holders is %d: give every contender of the lock the same max holders",
			l.cfg.Namespace, l.cfg.Name, what, m, lease.Name, n)}
	}
	for i, s := range l.slotLocks() {
		lease := srcs[i].lease
		if lease == nil {
			continue
		}
		_, isQueue := lease.Annotations[AnnotationQueue]
		if of, isPart := lease.Annotations[AnnotationLock]; i == 0 && (isPart || isQueue) {
			return permanentError{fmt.Errorf("Lease %s/%s is a part of lock %s, not a lock of its own: give the lock another name", l.cfg.Namespace, lease.Name, of)}
		}
		if i > 0 {
			if of := lease.Annotations[AnnotationLock]; of != l.cfg.Name {
				return permanentError{fmt.Errorf("Lease %s/%s, which lock %s would use for its holder %d, belongs to %s: give the lock another name",
					l.cfg.Namespace, lease.Name, l.cfg.Name, i+1, describeOwner(of))}
			}
		}
		if st := s.obs.state(l.cfg.Identity, now); st != stateHeld && st != stateOurs {
			continue
		}
		if m := MaxHoldersOf(lease); m != n {
			return refuse(lease, "held", m)
		}
	}
	if q := l.queue; q != nil && q.lease != nil {
		if of := q.lease.Annotations[AnnotationLock]; of != l.cfg.Name {
			return permanentError{fmt.Errorf("Lease %s/%s, which lock %s would queue its waiters in, belongs to %s: give the lock another name",
				l.cfg.Namespace, q.lease.Name, l.cfg.Name, describeOwner(of))}
		}
		if line, _ := q.line(l.cfg.Identity, nil, now); len(line) > 0 && !(len(line) == 1 && line[0] == l.cfg.Identity) {
			if m := MaxHoldersOf(q.lease); m != n {
				return refuse(q.lease, "waited for", m)
			}
		}
	}
	if first := srcs[0].lease; first != nil {
		if m := MaxHoldersOf(first); m > n {
			for _, name := range SlotNames(l.cfg.Name, m)[n:] {
				lease, age, err := l.getNamed(ctx, name)
				if err != nil {
					return err
				}
				if lease != nil && recordOf(lease).holder != "" && age < recordOf(lease).duration {
					return refuse(first, "held", m)
				}
			}
		}
	}
	return nil
}

// recheckCount reads, after a slot was taken, every slot of this
// contender's count, and gives the slot back with a refusal if another is
// held under another count. checkCount decided from reads made before the
// write; a contender with a smaller count may have taken a slot meanwhile.
// Of two such racers the one with the larger count always sees the other
// (the smaller's slots are among its own), so it is the one that gives way,
// before its command starts.
func (l *Lock) recheckCount(ctx context.Context, h *Hold) error {
	if l.cfg.MaxHolders == 1 {
		return nil
	}
	for _, name := range SlotNames(l.cfg.Name, l.cfg.MaxHolders) {
		if name == h.lock.cfg.Name {
			continue
		}
		lease, age, err := l.getNamed(ctx, name)
		if err != nil {
			return errors.Join(err, h.Release(ctx))
		}
		if lease == nil || recordOf(lease).holder == "" || age >= recordOf(lease).duration {
			continue
		}
		if m := MaxHoldersOf(lease); m != l.cfg.MaxHolders {
			err := permanentError{fmt.Errorf("lock %s/%s is held with max holders %d (Lease %s), and this contender's max holders is %d: give every contender of the lock the same max holders",
				l.cfg.Namespace, l.cfg.Name, m, lease.Name, l.cfg.MaxHolders)}
			return errors.Join(err, h.Release(ctx))
		}
	}
	return nil
}

func describeOwner(of string) string {
	if of == "" {
		return "no klock lock (it lacks the annotation " + AnnotationLock + ")"
	}
	return "lock " + of
}

// jitter is a random duration between d/2 and d.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// older reports whether a is an earlier version of the Lease b than b: a
// watch that started before this contender's own write delivers the states
// before it after the write's answer.
func older(a, b *coordinationv1.Lease) bool {
	if b == nil || a.UID != b.UID {
		return false
	}
	x, errA := strconv.ParseUint(a.ResourceVersion, 10, 64)
	y, errB := strconv.ParseUint(b.ResourceVersion, 10, 64)
	return errA == nil && errB == nil && x < y
}
