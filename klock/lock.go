package klock

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

// errConflict means a write lost a race: read the Lease again and decide anew.
var errConflict = errors.New("lease changed since it was read")

// Lock is one contender for one Lease. It remembers what it has seen of the
// Lease between calls, so that expiry is judged from its own observations.
// A Lock gives out one Hold at a time; its methods are safe for concurrent
// use, and concurrent acquisitions wait for each other.
type Lock struct {
	cfg    Config
	leases LeaseClient
	log    logr.Logger

	mu  sync.Mutex // serializes acquisitions; guards obs and unanswered
	obs observation
	// unanswered holds the renewTimes (Unix microseconds) of this Lock's
	// acquisition writes whose answer never came: each may have committed.
	// A Lease that names this identity with one of them is this Lock's own
	// acquisition, not another process's under the same identity.
	unanswered writes
	active     atomic.Pointer[Hold]

	// slots are the Locks of a counting lock's holder slots, the first
	// being this one; queue is where its waiters queue (OrderFIFO). Both
	// are nil for a mutex whose waiters race, the one-Lease lock client-go
	// also knows. lockOf is the lock a slot other than the first belongs
	// to.
	slots  []*Lock
	queue  *queue
	lockOf string
}

// New returns a Lock for the Lease cfg names. leases must be the Leases of
// cfg.Namespace, for example clientset.CoordinationV1().Leases(ns);
// NewForConfig builds a smaller client itself.
func New(leases LeaseClient, cfg Config) (*Lock, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	l := &Lock{
		cfg:    cfg,
		leases: leases,
		log:    cfg.Logger.WithValues("lease", cfg.Namespace+"/"+cfg.Name, "identity", cfg.Identity),
	}
	if cfg.MaxHolders > 1 || cfg.Order == OrderFIFO {
		l.initSet()
	}
	return l, nil
}

// Config returns the configuration with its defaults filled in, such as the
// generated identity.
func (l *Lock) Config() Config { return l.cfg }

// TryAcquire makes one attempt to take the Lease and does not wait. When the
// Lease is held by somebody else the error matches ErrHeld and is a
// *HeldError.
func (l *Lock) TryAcquire(ctx context.Context) (*Hold, error) {
	if !l.mu.TryLock() {
		return nil, fmt.Errorf("lease %s/%s: an acquisition through this Lock is already under way", l.cfg.Namespace, l.cfg.Name)
	}
	defer l.mu.Unlock()
	if err := l.checkIdle(); err != nil {
		return nil, err
	}
	var h *Hold
	var err error
	if l.isSet() {
		h, err = l.acquireSet(ctx, false)
	} else {
		h, err = l.tryAcquire(ctx)
	}
	if err != nil {
		l.abandon()
	}
	return h, err
}

func (l *Lock) tryAcquire(ctx context.Context) (*Hold, error) {
	// A conflict means another contender wrote between our read and our
	// write: read again and decide anew, a bounded number of times.
	for range 3 {
		lease, age, err := l.get(ctx)
		if err != nil {
			return nil, err
		}
		h, err := l.attempt(ctx, lease, age)
		if !errors.Is(err, errConflict) {
			return h, err
		}
	}
	return nil, fmt.Errorf("lease %s/%s changed between every read and write: it is heavily contended, try again", l.cfg.Namespace, l.cfg.Name)
}

// Acquire blocks until it holds the Lease or ctx ends. It watches the one
// Lease and tries again the moment the Lease is released, deleted or
// expires; it does not poll. API errors are retried every RetryPeriod, but
// if the API server has not answered once within RenewDeadline, Acquire
// returns the error: the address or credentials are likely wrong. When ctx
// ends while the Lease is held by somebody else the error matches ErrHeld,
// and wraps context.Cause(ctx).
func (l *Lock) Acquire(ctx context.Context) (*Hold, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkIdle(); err != nil {
		return nil, err
	}
	var h *Hold
	var err error
	if l.isSet() {
		h, err = l.acquireSet(ctx, true)
	} else {
		h, err = l.acquire(ctx)
	}
	if err != nil {
		l.abandon()
	}
	return h, err
}

func (l *Lock) acquire(ctx context.Context) (*Hold, error) {
	w := &leaseWatch{leases: l.leases, name: l.cfg.Name}
	defer w.reset()
	var (
		lease   *coordinationv1.Lease
		age     time.Duration // how old lease was by the server's clock when read
		current bool          // lease is the latest state known, fit to act on
		// held is set while the last verdict is "held by somebody else",
		// and cleared by any later failure, so that giving up after the
		// API server became unreachable is not reported as a conflict.
		held    *HeldError
		lastErr error // the last other failure
		// Until the API server has answered once, failing for a renew
		// deadline is taken as a wrong address or credentials, not a blip.
		answered  bool
		unreached = time.Now()
		expiry    = time.NewTimer(0)
		resync    = time.NewTicker(resyncPeriod)
	)
	defer expiry.Stop()
	defer resync.Stop()

	for {
		if !current {
			var err error
			if lease, age, err = l.get(ctx); err != nil {
				if permanent(err) || !answered && time.Since(unreached) >= l.cfg.RenewDeadline {
					return nil, err
				}
				lastErr, held = err, nil
			} else {
				answered, current = true, true
			}
		}
		wait := l.cfg.RetryPeriod // pause before trying again after a failure
		if current {
			h, err := l.attempt(ctx, lease, age)
			age = 0 // it dated that read only; later verdicts use local time
			switch {
			case err == nil:
				return h, nil
			case errors.As(err, &held):
				lastErr, wait = nil, l.obs.expiry().Sub(l.cfg.Clock.Now())
				l.log.V(1).Info("Lease is held; waiting", "holder", l.obs.record.holder, "expires", l.obs.expiry().Format(time.RFC3339Nano))
			case errors.Is(err, errConflict):
				current = false // somebody else won this round: see who
				continue
			case permanent(err):
				return nil, err
			default:
				lastErr, current, held = err, false, nil
			}
		}
		if current && lease != nil {
			// Watch from the version just judged, so that nothing written
			// after it is missed. Only now that waiting is certain: a free
			// Lease costs a read and a write, no more.
			w.follow(ctx, lease)
		}
		if w.w == nil {
			// No watch could be started: fall back to reading the Lease
			// every retry period until one can.
			current, wait = false, min(wait, l.cfg.RetryPeriod)
		}
		expiry.Reset(wait)

		select {
		case ev, ok := <-w.events():
			w.lastEvent = time.Now()
			switch {
			case !ok || ev.Type == watch.Error:
				// Closed by the server, or typically 410 Gone: the watch
				// fell too far behind. Read again and watch from there,
				// after a pause if watches keep ending at once.
				if time.Since(w.started) < l.cfg.RetryPeriod {
					sleep(ctx, l.cfg.RetryPeriod)
				}
				w.reset()
				current = false
			case ev.Type == watch.Deleted:
				lease, current = nil, true
			case ev.Type == watch.Added || ev.Type == watch.Modified:
				if obj, isLease := ev.Object.(*coordinationv1.Lease); isLease {
					lease, current = obj, true
				}
			}
		case <-expiry.C:
			// The observed holder expired, or a retry is due. The write is
			// conditional on the resourceVersion we act on, so a stale view
			// can cost a conflict but never a second holder.
		case <-resync.C:
			if time.Since(w.lastEvent) >= resyncPeriod {
				// A live holder renews every few seconds, so a watch this
				// quiet may be silently broken: read and watch again.
				w.reset()
				current = false
			}
		case <-ctx.Done():
			// The cause says why, e.g. a wait limit the caller set.
			cause := context.Cause(ctx)
			if held != nil {
				held.Cause = cause
				return nil, held
			}
			if lastErr != nil {
				return nil, fmt.Errorf("gave up waiting for lease %s/%s: %w (last error: %v)", l.cfg.Namespace, l.cfg.Name, cause, lastErr)
			}
			return nil, fmt.Errorf("gave up waiting for lease %s/%s: %w", l.cfg.Namespace, l.cfg.Name, cause)
		}
	}
}

// Run acquires the Lease (waiting as Acquire does), runs fn with a context
// that is cancelled if the Lease is lost, and releases the Lease when fn
// returns. When the Lease was lost the error matches ErrLost.
func (l *Lock) Run(ctx context.Context, fn func(ctx context.Context) error) error {
	h, err := l.Acquire(ctx)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-h.Lost():
			cancel(h.Err())
		case <-runCtx.Done():
		}
	}()
	err = fn(runCtx)
	cancel(nil)
	relCtx, relCancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RenewDeadline)
	defer relCancel()
	return errors.Join(err, h.Err(), h.Release(relCtx))
}

func (l *Lock) checkIdle() error {
	for _, s := range append([]*Lock{l}, l.slots...) {
		if h := s.active.Load(); h != nil {
			return fmt.Errorf("lease %s/%s is already held through this Lock: release it first", l.cfg.Namespace, l.cfg.Name)
		}
	}
	return nil
}

// get reads the Lease; a missing Lease is (nil, 0, nil). age is how long
// the Lease had stood unwritten by the API server's clock (see serverAge).
func (l *Lock) get(ctx context.Context) (*coordinationv1.Lease, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RenewDeadline)
	defer cancel()
	var date time.Time
	lease, err := l.leases.Get(withResponseDate(ctx, &date), l.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, describe(err, &l.cfg, "get")
	}
	return lease, serverAge(lease, date, l.cfg.Clock.Now()), nil
}

func (l *Lock) heldError() *HeldError {
	return &HeldError{
		Namespace: l.cfg.Namespace, Name: l.cfg.Name,
		Holder: l.obs.record.holder, Until: l.obs.expiry(),
	}
}

// attempt decides from lease (nil: missing) and, when the Lease may be taken,
// writes the acquisition conditionally on lease's resourceVersion.
func (l *Lock) attempt(ctx context.Context, lease *coordinationv1.Lease, age time.Duration) (*Hold, error) {
	now := l.cfg.Clock.Now()
	l.obs.observe(lease, now, age)
	if !l.isSet() && l.lockOf == "" {
		// A mutex whose waiters race: the Lease may still be a counting
		// lock's first slot.
		if err := l.checkCount(ctx, []*source{{name: l.cfg.Name, lease: lease}}, now); err != nil {
			return nil, err
		}
	}
	st := l.obs.state(l.cfg.Identity, now)
	switch {
	case st == stateHeld:
		return nil, l.heldError()
	case st == stateMissing && l.cfg.DisableCreate:
		return nil, fmt.Errorf("lease %s/%s does not exist and creating it is disabled: create it first", l.cfg.Namespace, l.cfg.Name)
	}

	// A Lease under our identity is either an acquisition of this Lock's
	// whose answer was lost, or another process's under the same identity,
	// which we join (re-entrant). joined is when the process we join last
	// wrote, zero for no join; a lost write remembers whether it was one.
	var joined time.Time
	own := st == stateOurs && l.unanswered.has(lease.Spec.RenewTime)
	mark := ""
	if st == stateOurs {
		mark = lease.Annotations[AnnotationReservation]
	}
	reserved := mark != ""
	if reserved && l.cfg.Reservation != "" && mark != l.cfg.Reservation {
		// Reserved for another process of the same name (a pod since
		// deleted, whose successor took its name): not ours to join.
		return nil, l.heldError()
	}
	switch {
	case own:
		joined = l.unanswered.joined(lease.Spec.RenewTime)
	case st == stateOurs && l.cfg.Reservation != "" && !reserved:
		// Held under the identity without the mark: the process the lock
		// was reserved for has taken it over, and a reservation made now
		// would share its hold and outlive it.
		return nil, permanentError{&takenOverError{l.cfg.Namespace, l.cfg.Name, l.cfg.Identity}}
	case reserved && l.cfg.Reservation == "":
		// Reserved for this identity: take it over as a new hold of our
		// own, whatever duration it was made with. Nobody else could take
		// the Lease meanwhile, and nobody shares it from here on: the
		// reservation's holder stops when it sees its mark gone.
	case st == stateOurs:
		if l.obs.record.duration != l.cfg.LeaseDuration {
			// Both would renew the Lease with their own duration, and the
			// shorter one would let others in while the longer one's
			// holder still trusts it.
			return nil, permanentError{fmt.Errorf("lease %s/%s is held under the same identity %q with a lease duration of %s, and this contender's is %s: give both the same lease duration, or each its own identity",
				l.cfg.Namespace, l.cfg.Name, l.cfg.Identity, l.obs.record.duration, l.cfg.LeaseDuration)}
		}
		// When the process we join last wrote, as far as we can tell: a
		// restarted process joining its own dead predecessor's hold need
		// not leave the Lease to it for a whole lease duration. A
		// reservation taken up from another reserver (a new leader of the
		// gate controller adopting the last one's) is no shared hold: its
		// predecessor has stopped, runs no command, and a release must
		// free the lock at once.
		if l.cfg.Reservation == "" {
			joined = l.obs.seen
		}
	}
	desired := l.acquisition(lease, st, now)
	// The write is not cancelled with ctx: cut off in flight, it might
	// commit with nobody to renew or release it. It is bounded by the
	// renew deadline, which the Hold counts from now.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RenewDeadline)
	defer cancel()
	l.unanswered.add(desired.Spec.RenewTime, joined)
	var (
		written *coordinationv1.Lease
		err     error
		verb    = "update"
	)
	if st == stateMissing {
		verb = "create"
		written, err = l.leases.Create(wctx, desired, metav1.CreateOptions{})
	} else {
		written, err = l.leases.Update(wctx, desired, metav1.UpdateOptions{})
	}
	if err == nil || refused(err) {
		l.unanswered.remove(desired.Spec.RenewTime)
	}
	switch {
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err) && verb == "update":
		// Changed or deleted since it was read.
		return nil, errConflict
	case err != nil:
		return nil, describe(err, &l.cfg, verb)
	}
	// Written: whatever earlier writes did, this one is the Lease now.
	l.unanswered.clear()
	l.obs.observe(written, now, 0)
	token, perr := strconv.ParseUint(written.ResourceVersion, 10, 64)
	h := newHold(l, written, now, joined, token)
	if perr != nil {
		// Kubernetes 1.35 and later promise integer resource versions.
		err = permanentError{fmt.Errorf("the API server returned resourceVersion %q, not an integer, so no fencing token can be derived (Kubernetes 1.35 or later is required)", written.ResourceVersion)}
		return nil, errors.Join(err, h.Release(ctx))
	}
	l.log.V(1).Info("Acquired lease", "token", token, "reentrant", h.reentrant, "recovered", own)
	return h, nil
}

// abandon gives back an acquisition of this Lock's that may have committed
// although its answer never came, before an acquisition returns without a
// Hold: nobody would renew or release it, and every waiter would wait for
// it to expire. Best effort, bounded by the renew deadline.
func (l *Lock) abandon() {
	for _, s := range l.slots[min(1, len(l.slots)):] {
		s.abandon()
	}
	if l.unanswered.empty() {
		return
	}
	defer l.unanswered.clear()
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.RenewDeadline)
	defer cancel()
	lease, _, err := l.get(ctx)
	if err != nil || lease == nil || recordOf(lease).holder != l.cfg.Identity || !l.unanswered.has(lease.Spec.RenewTime) {
		return
	}
	if !l.unanswered.joined(lease.Spec.RenewTime).IsZero() {
		return // a join: the Lease is the other process's to give back
	}
	released := releasedLease(lease, l.cfg.Clock.Now())
	if _, err := l.leases.Update(ctx, released, metav1.UpdateOptions{}); err != nil {
		l.log.V(1).Info("Could not give back an acquisition whose answer was lost", "err", err.Error())
		return
	}
	l.log.V(1).Info("Gave back an acquisition whose answer was lost")
}

// refused reports an error after which the write certainly did not commit:
// the API server answered with a client error. Anything else (a timeout, a
// broken connection, a 5xx) may come after the write committed.
func refused(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return false
	}
	code := status.Status().Code
	return code >= 400 && code < 500 && code != http.StatusRequestTimeout
}

// writes is a set of renewTimes, as the API server stores them (Unix
// microseconds), of writes whose answer has not come back. Each notes
// whether it joined another process under the same identity, and when that
// process last wrote (zero: no join).
type writes map[int64]time.Time

func (w *writes) add(t *metav1.MicroTime, joined time.Time) {
	if *w == nil {
		*w = writes{}
	}
	(*w)[t.UnixMicro()] = joined
}

func (w writes) has(t *metav1.MicroTime) bool {
	if t == nil {
		return false
	}
	_, ok := w[t.UnixMicro()]
	return ok
}

func (w writes) joined(t *metav1.MicroTime) time.Time { return w[t.UnixMicro()] }
func (w writes) remove(t *metav1.MicroTime)           { delete(w, t.UnixMicro()) }
func (w writes) clear()                               { clear(w) }
func (w writes) empty() bool                          { return len(w) == 0 }

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// acquisition is the Lease as this identity takes it: the record client-go's
// leader election writes, so that both kinds of contender agree on it. A
// Lease already held under this identity (joined, or an acquisition of this
// Lock's whose answer was lost) is renewed, not counted as a new transition.
func (l *Lock) acquisition(lease *coordinationv1.Lease, st state, now time.Time) *coordinationv1.Lease {
	var next *coordinationv1.Lease
	if lease == nil {
		next = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Name: l.cfg.Name, Namespace: l.cfg.Namespace,
			Labels: map[string]string{ManagedByLabel: ManagedByValue},
		}}
	} else {
		next = lease.DeepCopy()
	}
	if len(l.cfg.Labels) > 0 && next.Labels == nil {
		next.Labels = make(map[string]string, len(l.cfg.Labels))
	}
	for k, v := range l.cfg.Labels {
		next.Labels[k] = v
	}
	// Every holder records the lock's count, so that a contender with
	// another is told (checkCount); a mutex's first Lease records none.
	setMaxHolders(next, l.cfg.MaxHolders)
	if l.cfg.Reservation != "" {
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		next.Annotations[AnnotationReservation] = l.cfg.Reservation
	} else if _, ok := next.Annotations[AnnotationReservation]; ok {
		// A takeover: the token recorded is the reservation's, and this
		// holder's own is known once written.
		delete(next.Annotations, AnnotationReservation)
		delete(next.Annotations, AnnotationFencingToken)
	}
	if l.lockOf != "" {
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		next.Annotations[AnnotationLock] = l.lockOf
	}

	s := &next.Spec
	ts := microTime(now)
	s.HolderIdentity = &l.cfg.Identity
	s.LeaseDurationSeconds = ptr(int32(l.cfg.LeaseDuration / time.Second))
	s.RenewTime = &ts
	if st != stateOurs {
		// The token recorded is the last holder's; this holder's own is
		// known once written, and recorded with its renewals.
		delete(next.Annotations, AnnotationFencingToken)
	}
	switch {
	case st == stateOurs && s.AcquireTime != nil:
		// Re-entrant, or our own acquisition already: the acquisition and
		// the transition count stay.
	case lease == nil:
		s.AcquireTime, s.LeaseTransitions = &ts, ptr(int32(0))
	default:
		s.AcquireTime, s.LeaseTransitions = &ts, ptr(l.obs.record.transitions+1)
	}
	return next
}

// microTime is t as the API server stores a MicroTime: to the microsecond.
// A time written at finer precision would never compare equal with what
// the server returns, and "is this my own write?" would always say no.
func microTime(t time.Time) metav1.MicroTime {
	return metav1.NewMicroTime(t.Truncate(time.Microsecond))
}

func ptr[T any](v T) *T { return &v }

// leaseWatch follows one Lease by a field selector on its name.
type leaseWatch struct {
	leases    LeaseClient
	name      string
	w         watch.Interface // nil when none runs
	started   time.Time
	lastEvent time.Time
	forbidden bool // RBAC grants no watch: do not ask again
}

// follow starts watching from lease's resourceVersion unless a watch runs, so
// that nothing written after that read is missed. A failure leaves w.w nil.
func (w *leaseWatch) follow(ctx context.Context, lease *coordinationv1.Lease) {
	if w.w != nil || w.forbidden {
		return
	}
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", w.name).String()}
	if lease != nil {
		opts.ResourceVersion = lease.ResourceVersion
	}
	wi, err := w.leases.Watch(ctx, opts)
	if err == nil {
		w.w = wi
	}
	w.forbidden = apierrors.IsForbidden(err)
	w.started, w.lastEvent = time.Now(), time.Now()
}

// events is nil, which blocks forever in a select, when no watch runs.
func (w *leaseWatch) events() <-chan watch.Event {
	if w.w == nil {
		return nil
	}
	return w.w.ResultChan()
}

func (w *leaseWatch) reset() {
	if w.w != nil {
		w.w.Stop()
		w.w = nil
	}
}
