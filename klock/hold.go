package klock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Hold is one acquisition of a Lease. It renews the Lease in the background
// until Release, or until it cannot renew before the renew deadline, which it
// reports by closing Lost.
type Hold struct {
	lock      *Lock
	token     uint64
	reentrant bool

	mu    sync.Mutex
	lease *coordinationv1.Lease // as last written by this Hold
	// unanswered holds the renewTimes of this Hold's renewals since the
	// last answered one: any of them may have committed.
	unanswered writes
	// peerSeen is when another process under the same identity was last
	// seen holding the Lease (zero: never). Release leaves the Lease to it
	// while it may still be there.
	peerSeen time.Time

	lost   chan struct{}
	err    error // why the Lease was lost; set before lost is closed
	cancel context.CancelFunc
	done   chan struct{} // closed when the renew loop has returned

	releaseOnce sync.Once
	releaseErr  error
	// leaveQueue, when set, takes the holder's place out of the lock's
	// queue on release: leaving it when acquiring failed.
	leaveQueue func(context.Context)
}

// newHold starts renewing lease, whose acquisition was sent at sent. joined
// is when the process under the same identity that already held the Lease
// last wrote it, zero if there was none.
func newHold(l *Lock, lease *coordinationv1.Lease, sent, joined time.Time, token uint64) *Hold {
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hold{
		lock: l, lease: lease, reentrant: !joined.IsZero(), peerSeen: joined, token: token,
		lost: make(chan struct{}), cancel: cancel, done: make(chan struct{}),
	}
	l.active.Store(h)
	// The first renewal is scheduled now, not when the goroutine first
	// runs, which may be later.
	first := time.NewTimer(sent.Add(l.cfg.RenewInterval).Sub(l.cfg.Clock.Now()))
	go h.renewLoop(ctx, sent, first)
	return h
}

// Token is the fencing token of this acquisition: it is greater than the
// token of every earlier acquisition of the same lease name, including those
// before the Lease was deleted and created again. Pass it to whatever the
// lock protects, and have that refuse writes with a token lower than one it
// has seen.
func (h *Hold) Token() uint64 { return h.token }

// Reentrant reports whether the Lease was already held under the same
// identity, by another process, when this Hold took it.
func (h *Hold) Reentrant() bool { return h.reentrant }

// Lost is closed when the Lease could not be renewed before the renew
// deadline, or was taken over or deleted by somebody else. Whatever the
// Lease protects must stop then: the Lease may go to another holder as soon
// as LeaseDuration - RenewDeadline later.
func (h *Hold) Lost() <-chan struct{} { return h.lost }

// Err is nil while the Lease is held, and matches ErrLost once Lost is closed.
func (h *Hold) Err() error {
	select {
	case <-h.lost:
		return h.err
	default:
		return nil
	}
}

// Release stops renewing and gives the Lease back at once, clearing its
// holder (or deleting it with Config.DeleteOnRelease) so that the next
// waiter need not wait for it to expire. It writes nothing if the Lease was
// lost or has been taken by somebody else, and leaves the Lease to another
// process under the same identity that wrote it within the last lease
// duration (which then releases it, or lets it expire). Calling it again
// returns the first result.
func (h *Hold) Release(ctx context.Context) error {
	h.releaseOnce.Do(func() {
		h.cancel()
		<-h.done
		defer h.lock.active.CompareAndSwap(h, nil)
		if h.leaveQueue != nil {
			defer h.leaveQueue(ctx)
		}
		if h.Err() != nil {
			return
		}
		h.releaseErr = h.giveBack(ctx)
	})
	return h.releaseErr
}

// HandOver stops renewing without giving the Lease back, for a holder
// that hands its hold over to another process under the same identity: a
// reserver that shuts down leaves its reservation for the next to adopt.
// The Lease expires a lease duration after its last renewal unless that
// process renews it. Release afterwards does nothing.
func (h *Hold) HandOver() {
	h.releaseOnce.Do(func() {
		h.cancel()
		<-h.done
		h.lock.active.CompareAndSwap(h, nil)
	})
}

// sharing reports whether another process under the same identity may
// still hold the Lease: it wrote within the last lease duration, and
// renews more often than that while it lives. Callers hold h.mu.
func (h *Hold) sharing() bool {
	return !h.peerSeen.IsZero() && h.lock.cfg.Clock.Since(h.peerSeen) < h.lock.cfg.LeaseDuration
}

func (h *Hold) renewLoop(ctx context.Context, lastRenew time.Time, timer *time.Timer) {
	defer close(h.done)
	cfg := &h.lock.cfg
	log := h.lock.log
	// Renewals are due RenewInterval after the last successful one was
	// sent, however long its answer took, so that the next one always
	// starts before the renew deadline.
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		// The deadline counts from when the last successful renewal was
		// sent: the API server wrote it no earlier than that, and others
		// count the lease duration from when they saw it.
		deadline := lastRenew.Add(cfg.RenewDeadline)
		var lastErr error
		for {
			now := cfg.Clock.Now()
			if !now.Before(deadline) {
				h.fail(fmt.Errorf("%w: could not renew lease %s/%s within the renew deadline %s: %v", ErrLost, cfg.Namespace, cfg.Name, cfg.RenewDeadline, lastErr))
				return
			}
			// Bound each try, so that a hung connection leaves time for
			// another try before the deadline.
			attemptCtx, cancel := context.WithTimeout(ctx, min(deadline.Sub(now), max(cfg.RetryPeriod, time.Second)))
			err := h.renew(attemptCtx, now)
			cancel()
			if err == nil {
				lastRenew = now
				break
			}
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrLost) {
				h.fail(err)
				return
			}
			lastErr = err
			log.V(1).Info("Renewing the lease failed; retrying", "err", err.Error(), "deadline", deadline.Format(time.RFC3339Nano))
			pause := time.NewTimer(min(cfg.RetryPeriod/4, deadline.Sub(cfg.Clock.Now())))
			select {
			case <-ctx.Done():
				pause.Stop()
				return
			case <-pause.C:
			}
		}
		timer.Reset(lastRenew.Add(cfg.RenewInterval).Sub(cfg.Clock.Now()))
	}
}

func (h *Hold) fail(err error) {
	if errors.Is(err, ErrTakenOver) {
		h.lock.log.V(1).Info("The reservation was taken over by its holder")
	} else {
		h.lock.log.Info("Lost the lease", "err", err.Error())
	}
	h.err = err
	close(h.lost)
}

// renew writes this holder's record with a new renewTime, conditionally on
// the resourceVersion last written. The whole record is written, as
// client-go's leader election does: a duration shortened by somebody else
// would let others take the Lease while this holder still trusts it. After
// a conflict it re-reads: if this identity still holds the Lease, it tries
// again; otherwise the Lease is lost.
func (h *Hold) renew(ctx context.Context, now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	cfg := &h.lock.cfg
	cur := h.lease
	for {
		next := cur.DeepCopy()
		ts := microTime(now)
		next.Spec.HolderIdentity = &cfg.Identity
		next.Spec.LeaseDurationSeconds = ptr(int32(cfg.LeaseDuration / time.Second))
		next.Spec.RenewTime = &ts
		// The token is known only once the acquisition is written: the
		// renewals record it, for klock status.
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		next.Annotations[AnnotationFencingToken] = strconv.FormatUint(h.token, 10)
		h.unanswered.add(&ts, time.Time{})
		written, err := h.lock.leases.Update(ctx, next, metav1.UpdateOptions{})
		if err == nil {
			h.lease = written
			h.unanswered.clear()
			return nil
		}
		if refused(err) {
			h.unanswered.remove(&ts)
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return err
		}
		if cur, err = h.stillOurs(ctx); err != nil {
			return err
		}
		h.lock.log.V(1).Info("Lease changed under the same identity; renewing again", "sharing", h.sharing())
	}
}

// stillOurs re-reads the Lease after a conflict and returns it if this
// identity still holds it, and an error matching ErrLost if not. A renewTime
// this Hold did not write means another process shares the identity; one
// it wrote but got no answer for is its own. Callers hold h.mu.
func (h *Hold) stillOurs(ctx context.Context) (*coordinationv1.Lease, error) {
	cfg := &h.lock.cfg
	cur, err := h.lock.leases.Get(ctx, cfg.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("%w: lease %s/%s was deleted", ErrLost, cfg.Namespace, cfg.Name)
	case err != nil:
		return nil, err
	}
	if holder := recordOf(cur).holder; holder != cfg.Identity {
		return nil, fmt.Errorf("%w: lease %s/%s is now held by %q", ErrLost, cfg.Namespace, cfg.Name, holder)
	}
	if cfg.Reservation != "" && cur.Annotations[AnnotationReservation] == "" {
		// The process the lock was reserved for took it over: the
		// reservation ends here, and must not write again.
		return nil, &takenOverError{cfg.Namespace, cfg.Name, cfg.Identity}
	}
	rt := cur.Spec.RenewTime
	if !h.unanswered.has(rt) && !(rt != nil && h.lease.Spec.RenewTime != nil && rt.Equal(h.lease.Spec.RenewTime)) {
		h.peerSeen = cfg.Clock.Now()
	}
	return cur, nil
}

// releasedLease is lease given back the way client-go's leader election
// releases: holder empty, duration 1s, transitions kept.
func releasedLease(lease *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	next := lease.DeepCopy()
	ts := microTime(now)
	next.Spec.HolderIdentity = ptr("")
	next.Spec.LeaseDurationSeconds = ptr(int32(1))
	next.Spec.AcquireTime, next.Spec.RenewTime = &ts, &ts
	delete(next.Annotations, AnnotationReservation)
	return next
}

// giveBack clears the holder (releasedLease), or deletes the Lease,
// conditionally on what this Hold last wrote. A Lease that another process
// under the same identity may still hold is left to that process.
func (h *Hold) giveBack(ctx context.Context) error {
	cfg := &h.lock.cfg
	verb := "release"
	if cfg.DeleteOnRelease {
		verb = "delete"
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for !h.sharing() {
		cur := h.lease
		var err error
		if cfg.DeleteOnRelease {
			uid, rv := cur.UID, cur.ResourceVersion
			err = h.lock.leases.Delete(ctx, cfg.Name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{UID: (*types.UID)(&uid), ResourceVersion: &rv},
			})
		} else {
			_, err = h.lock.leases.Update(ctx, releasedLease(cur, cfg.Clock.Now()), metav1.UpdateOptions{})
		}
		switch {
		case err == nil:
			h.lock.log.V(1).Info("Released the lease", "deleted", cfg.DeleteOnRelease)
			return nil
		case apierrors.IsNotFound(err):
			return nil
		case refused(err) && !apierrors.IsConflict(err):
			return describe(err, cfg, verb)
		case !apierrors.IsConflict(err):
			// No answer: the release may have committed. Read the Lease
			// back to see, unless the caller has given up.
			if ctx.Err() != nil {
				return describe(err, cfg, verb)
			}
			sleep(ctx, cfg.RetryPeriod/4)
		}
		// A conflict with a Lease still ours comes from a renewal of this
		// Hold's whose answer was lost, or from a process sharing the
		// identity; stillOurs tells which. After a release whose answer
		// was lost, it finds the Lease released (or deleted).
		lease, err := h.stillOurs(ctx)
		if errors.Is(err, ErrLost) {
			return nil // released already, or somebody else's now
		}
		if err != nil {
			return describe(err, cfg, verb)
		}
		h.lease = lease
	}
	h.lock.log.V(1).Info("Leaving the lease to the other process under the same identity")
	return nil
}
