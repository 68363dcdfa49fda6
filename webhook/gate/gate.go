// Package gate holds wrapped pods at the scheduler until their lock is
// theirs. The webhook creates a pod that asks for it with the scheduling
// gate klock.io/lock (package wrap), so that it waits on no node, holding
// nothing. The Reconciler, on the leader, puts each gated pod in its
// lock's queue under the pod's name, as the pod's own klock would wait;
// when it is the pod's turn it reserves the lock for the pod
// (klock.Config.Reservation) and removes the gate. The pod's klock takes
// the reservation over as its own hold when it starts. A reservation whose
// pod has not started within its start timeout, or that was deleted or
// failed first, is released.
package gate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/klock-io/klock/internal/cli"
	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/webhook/wrap"
)

// Event reasons on gated pods.
const (
	ReasonWaiting            = "WaitingForLock"
	ReasonReserved           = "LockReserved"
	ReasonReservationExpired = "ReservationExpired"
	ReasonWaitElapsed        = "LockWaitElapsed"
	ReasonNotReserved        = "LockNotReserved"
)

// Why a pod's worker stops: errPodGone and errUngated release its
// reservation at once and leave the queue; errShutdown leaves both for
// the next leader, which waits under the same pod names (ErrKeepPlace),
// adopts the reservation, or lets it expire. A pod ungated by hand does
// not keep its place: nobody would leave it if the pod were deleted
// before its klock started, and the lock would idle for a queue TTL.
var (
	errPodGone  = errors.New("the pod was deleted or has finished")
	errUngated  = errors.New("the pod's gate was removed by somebody else")
	errShutdown = fmt.Errorf("the gate controller is shutting down: %w", klock.ErrKeepPlace)
)

// Reconciler lets gated pods through, each when its lock is reserved for
// it. It runs on the leader only; its workers end with the leadership.
type Reconciler struct {
	// Client reads the gated pods from the manager's cache and patches
	// them; API reads them from the API server when a patch conflicts.
	Client client.Client
	API    client.Reader
	// Config is how the reservations reach the API server.
	Config *rest.Config
	Events recorder.EventRecorder
	// Wrap is how the webhook wraps pods: only a pod wrapped that way is
	// reserved for.
	Wrap wrap.Options
	// Access, when set, says what a pod's service account may not do to
	// its lock's Leases (leaseaccess.Reviewer): a lock is reserved only
	// for a pod whose own klock could hold it, so that the controller's
	// permissions never hold a Lease for a pod author that theirs cannot.
	Access interface {
		Denied(ctx context.Context, pod *corev1.Pod) (string, error)
	}

	mu      sync.Mutex
	base    context.Context // the leader's; cancelled with errShutdown
	workers map[types.NamespacedName]*worker
	running sync.WaitGroup // every worker's goroutine, stopped or not
	leases  map[string]klock.LeaseClient
}

// worker waits for, then keeps, one pod's reservation.
type worker struct {
	uid    types.UID
	cancel context.CancelCauseFunc
	// gated is true while the worker waits for the lock with the pod
	// still gated; a pod found ungated then was ungated by hand.
	mu    sync.Mutex
	gated bool
}

func (w *worker) waiting() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gated
}

func (w *worker) setWaiting(v bool) {
	w.mu.Lock()
	w.gated = v
	w.mu.Unlock()
}

// SetupWithManager watches the pods the webhook gated (labelled
// wrap.LabelGated; the manager's cache holds no others).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	base, cancel := context.WithCancelCause(context.Background())
	r.base, r.workers, r.leases = base, map[types.NamespacedName]*worker{}, map[string]klock.LeaseClient{}
	// The workers live as long as the leadership: a Runnable that needs
	// leader election starts with it and is stopped with it.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		// Under r.mu, so that no worker starts after it (see start).
		r.mu.Lock()
		cancel(errShutdown)
		r.mu.Unlock()
		r.stopAll()
		return nil
	})); err != nil {
		return err
	}
	// The label alone proves nothing (anyone may set it): only pods klock
	// wrapped are looked at.
	gated := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetLabels()[wrap.LabelGated] == "true" && o.GetAnnotations()[wrap.AnnotationInjected] != ""
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("gate").
		For(&corev1.Pod{}, builder.WithPredicates(gated)).
		Complete(r)
}

// Reconcile starts a worker for a gated pod, or for a pod let through
// whose klock has not started (a reservation the last leader made), and
// stops the worker of a pod deleted, finished or ungated by hand.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pod := &corev1.Pod{}
	if err := r.Client.Get(ctx, req.NamespacedName, pod); err != nil {
		if apierrors.IsNotFound(err) {
			r.stop(req.NamespacedName, "", errPodGone)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		r.stop(req.NamespacedName, "", errPodGone)
		return ctrl.Result{}, nil
	}
	r.mu.Lock()
	w := r.workers[req.NamespacedName]
	r.mu.Unlock()
	if w != nil && w.uid != pod.UID {
		r.stop(req.NamespacedName, w.uid, errPodGone) // a pod of the same name before this one
		w = nil
	}
	gated := wrap.Gated(pod)
	switch {
	case w != nil && !gated && w.waiting():
		// Ungated by somebody else while it waited: the pod's klock
		// waits for the lock itself.
		r.stop(req.NamespacedName, w.uid, errUngated)
	case w != nil:
	case !wrap.WrappedByAnyVersion(pod, r.Wrap):
		// Only a pod whose klock will take the lock is reserved for; the
		// gate of any other stays, as its author made it. Said once: the
		// pod is not looked at again until it changes.
		if gated {
			r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonNotReserved, "Reserve",
				"The pod is not wrapped by klock as the webhook wraps it, so its lock is never reserved and the gate %s stays: recreate it from its workload", wrap.SchedulingGate)
		}
		return ctrl.Result{}, nil
	case gated:
		r.start(pod, true)
	case !started(pod):
		r.start(pod, false)
	}
	if gated {
		// A worker that failed (the gate could not be removed, say) has
		// ended: look again later, and start another.
		return ctrl.Result{RequeueAfter: recheck}, nil
	}
	return ctrl.Result{}, nil
}

// started reports whether the wrapped container has started, and with it
// the pod's klock (which then holds the lock itself, or waits for it).
func started(pod *corev1.Pod) bool {
	name := pod.Annotations[wrap.AnnotationInjected]
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == name && (s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0) {
			return true
		}
	}
	return false
}

func (r *Reconciler) start(pod *corev1.Pod, gated bool) {
	key := client.ObjectKeyFromObject(pod)
	ctx, cancel := context.WithCancelCause(r.base)
	w := &worker{uid: pod.UID, cancel: cancel, gated: gated}
	r.mu.Lock()
	if r.base.Err() != nil {
		r.mu.Unlock()
		cancel(nil)
		return
	}
	r.workers[key] = w
	r.running.Add(1)
	r.mu.Unlock()
	pod = pod.DeepCopy()
	go func() {
		defer r.running.Done()
		defer cancel(nil) // off r.base's children
		defer func() {
			r.mu.Lock()
			if r.workers[key] == w {
				delete(r.workers, key)
			}
			r.mu.Unlock()
		}()
		log := ctrl.LoggerFrom(ctx).WithValues("pod", key)
		if err := r.run(ctx, w, pod); err != nil && ctx.Err() == nil {
			log.Error(err, "Gate worker failed")
			r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonNotReserved, "Reserve",
				"Cannot reserve the pod's lock: %v; tried again within %s", err, recheck)
		}
	}()
}

// stop ends the worker of key (of pod uid, or whichever). It does not wait
// for the worker, whose release may take a renew deadline: the one
// reconcile goroutine goes on to other pods meanwhile.
func (r *Reconciler) stop(key types.NamespacedName, uid types.UID, cause error) {
	r.mu.Lock()
	w := r.workers[key]
	if w != nil && (uid == "" || w.uid == uid) {
		delete(r.workers, key) // a pod of the same name may get a worker at once
	} else {
		w = nil
	}
	r.mu.Unlock()
	if w != nil {
		w.cancel(cause)
	}
}

// stopAll waits for every worker, once the base context has ended them.
func (r *Reconciler) stopAll() { r.running.Wait() }

// leaseClient returns the Lease client of namespace, made once.
func (r *Reconciler) leaseClient(namespace string) (klock.LeaseClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.leases[namespace]; ok {
		return c, nil
	}
	c, err := klock.NewLeaseClient(r.Config, namespace)
	if err != nil {
		return nil, err
	}
	r.leases[namespace] = c
	return c, nil
}

// reservation is the lock a pod's klock will hold, as its annotations
// say (the webhook wrote its argv from them, and Wrapped checked that),
// reserved for the pod.
func reservation(pod *corev1.Pod) (klock.Config, *cli.Options, error) {
	flags, errs := wrap.Flags(pod.Annotations)
	if len(errs) > 0 {
		return klock.Config{}, nil, errs.ToAggregate()
	}
	o, err := cli.ParseFlags(flags)
	if err != nil {
		return klock.Config{}, nil, err
	}
	cfg := o.LockConfigFor(pod.Namespace, pod.Name)
	cfg.Reservation = string(pod.UID)
	return cfg, o, nil
}

// run waits for the pod's turn (gated) or adopts the reservation the last
// leader made (not gated), then keeps the reservation until the pod's
// klock takes it over, the start timeout passes or the pod goes.
func (r *Reconciler) run(ctx context.Context, w *worker, pod *corev1.Pod) error {
	cfg, o, err := reservation(pod)
	if err != nil {
		return fmt.Errorf("reading the pod's klock settings: %w", err)
	}
	leases, err := r.leaseClient(pod.Namespace)
	if err != nil {
		return err
	}
	lock, err := klock.New(leases, cfg)
	if err != nil {
		return err
	}
	startTimeout, err := wrap.StartTimeout(pod.Annotations)
	if err != nil {
		return err
	}
	// The start timeout counts from the reservation: from now, for one
	// made here after the pod's wait, or from when the last leader made
	// it.
	var h *klock.Hold
	var since time.Time
	if w.waiting() {
		h, err = r.await(ctx, w, pod, lock, o, startTimeout)
		since = time.Now()
	} else {
		h, since, err = r.adopt(ctx, pod, lock)
	}
	if h == nil || err != nil {
		return err
	}
	left := min(max(startTimeout-time.Since(since), 0), startTimeout)
	return r.keep(ctx, pod, h, cfg.Name, left, startTimeout)
}

// await waits in the lock's queue for the pod's turn, reserves the lock
// and removes the gate. It lets the pod through unreserved when its wait
// (klock.io/wait) has elapsed, so that its klock exits with the conflict
// code as it would have, or when reserving fails for good, so that its
// klock reports the same error where its author looks.
func (r *Reconciler) await(ctx context.Context, w *worker, pod *corev1.Pod, lock *klock.Lock, o *cli.Options, startTimeout time.Duration) (*klock.Hold, error) {
	name := lock.Config().Name
	waitCtx, cancel := ctx, context.CancelFunc(func() {})
	if o.Wait > 0 || o.NonBlock {
		deadline := pod.CreationTimestamp.Add(o.Wait)
		waitCtx, cancel = context.WithDeadlineCause(ctx, deadline, fmt.Errorf("its wait of %s has elapsed", o.Wait))
	}
	defer cancel()

	if err := r.permitted(ctx, pod, name); err != nil {
		return nil, nil // stopped while it waited for the permission
	}
	// One attempt even when the wait has elapsed already, as klock makes.
	h, err := lock.TryAcquire(ctx)
	if err != nil && !klock.Permanent(err) || errors.Is(err, klock.ErrTakenOver) {
		var held *klock.HeldError
		switch {
		case waitCtx.Err() != nil: // no waiting to report
		case errors.As(err, &held):
			r.Events.Eventf(pod, nil, corev1.EventTypeNormal, ReasonWaiting, "Wait",
				"Waiting for lock %s (held by %s, position %d of %d)", name, holderText(held.Holder), held.Waiters+1, held.Waiters+1)
		case errors.Is(err, klock.ErrTakenOver):
			r.Events.Eventf(pod, nil, corev1.EventTypeNormal, ReasonWaiting, "Wait",
				"Waiting for lock %s, held under the pod's own name by another process (a pod of the same name before this one): let through, its klock would share that hold", name)
		}
		gatedPods.add(pod.Namespace, name, 1)
		defer gatedPods.add(pod.Namespace, name, -1)
		h, err = r.acquire(ctx, waitCtx, lock)
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, nil // stopped: the pod went, or the leadership
	case errors.Is(err, klock.ErrHeld):
		r.Events.Eventf(pod, nil, corev1.EventTypeNormal, ReasonWaitElapsed, "Ungate",
			"The pod's wait for lock %s has elapsed at the scheduler: letting it through unreserved; its klock waits up to its own wait again, then exits with the conflict exit code", name)
		return nil, r.ungate(ctx, pod, time.Minute)
	default:
		r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonNotReserved, "Reserve",
			"Cannot reserve lock %s: %v; letting the pod through, where its klock meets the same error or waits for the lock itself", name, err)
		return nil, errors.Join(err, r.ungate(ctx, pod, time.Minute))
	}
	w.setWaiting(false) // the pod ungated from here on is ours to keep
	// The gate is removed while the reservation is renewed, for as long
	// as the pod would have to start: a pod that cannot be ungated in
	// that time does not keep the lock from everybody else.
	if err := r.ungate(ctx, pod, startTimeout); err != nil {
		release(h)
		return nil, err
	}
	gated := time.Since(pod.CreationTimestamp.Time)
	gatedSeconds.Observe(gated.Seconds())
	r.Events.Eventf(pod, nil, corev1.EventTypeNormal, ReasonReserved, "Ungate",
		"Lock %s reserved for the pod after %s gated; starting", name, gated.Round(time.Millisecond))
	return h, nil
}

// recheck is how often a gated pod is looked at again, and the least
// interval between checks of a service account's Lease permissions, which
// doubles up to maxAccessRecheck while they are missing.
const (
	recheck          = time.Minute
	accessRecheck    = 30 * time.Second
	maxAccessRecheck = 10 * time.Minute
)

// permitted returns once the pod's service account may use the Leases of
// its lock, or with ctx's error. Until then the pod stays gated, with an
// event that says what to grant: let through, its klock would fail.
func (r *Reconciler) permitted(ctx context.Context, pod *corev1.Pod, name string) error {
	told, wait := false, accessRecheck
	for r.Access != nil {
		denied, err := r.Access.Denied(ctx, pod)
		if err == nil && denied == "" {
			return nil
		}
		if !told {
			told = true
			if err != nil {
				denied = "could not check the service account's permissions: " + err.Error()
			}
			r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonNotReserved, "Reserve",
				"Not reserving lock %s yet, the pod stays gated: %s", name, denied)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, maxAccessRecheck)
	}
	return nil
}

// acquire waits for the lock until waitCtx ends, retrying after errors
// that may pass. A lock held under the pod's name without a reservation
// (ErrTakenOver) is held by another process of that name, not by this
// pod, whose klock has not started: a pod deleted while its klock still
// runs on a lost node, whose successor took its name. The pod stays gated
// until that hold ends, its wait elapsed or not, since its klock would
// join that hold (the same identity) and run alongside it.
func (r *Reconciler) acquire(ctx, waitCtx context.Context, lock *klock.Lock) (*klock.Hold, error) {
	cfg := lock.Config()
	for {
		var h *klock.Hold
		var err error
		if waitCtx.Err() == nil {
			h, err = lock.Acquire(waitCtx)
		} else {
			h, err = lock.TryAcquire(ctx) // the wait is over: one more try
		}
		pause := cfg.RetryPeriod
		switch {
		case err == nil:
			return h, nil
		case ctx.Err() != nil:
			return nil, context.Cause(ctx)
		case errors.Is(err, klock.ErrTakenOver):
			pause = cfg.LeaseDuration
		case errors.Is(err, klock.ErrHeld) || klock.Permanent(err):
			return nil, err
		case waitCtx.Err() != nil:
			return nil, fmt.Errorf("%w (last error: %v)", context.Cause(waitCtx), err)
		}
		ctrl.LoggerFrom(ctx).V(1).Info("Reserving failed; retrying", "err", err.Error())
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(pause):
		}
	}
}

// adopt takes up a reservation that another leader made for a pod it let
// through: only one (the Lease is held under the pod's name, marked for
// the pod), never a new one, since the pod's klock may start at any
// moment and waits its turn itself.
//
// It returns when the reservation was made, by the last leader's clock, so
// that the start timeout counts from then and not again from each
// adoption: leaders that keep changing cannot keep a lock reserved for a
// pod that never starts.
func (r *Reconciler) adopt(ctx context.Context, pod *corev1.Pod, lock *klock.Lock) (*klock.Hold, time.Time, error) {
	cfg := lock.Config()
	leases, err := r.leaseClient(pod.Namespace)
	if err != nil {
		return nil, time.Time{}, err
	}
	// Errors that may pass are retried for a lease duration: by then an
	// unrenewed reservation has expired anyway.
	until := time.Now().Add(cfg.LeaseDuration)
	for {
		since, err := reservedSince(ctx, leases, pod, cfg)
		if err == nil && since.IsZero() {
			return nil, time.Time{}, nil // none: the pod's klock waits its turn itself
		}
		var h *klock.Hold
		if err == nil {
			if h, err = lock.TryAcquire(ctx); err == nil {
				return h, since, nil
			}
		}
		if errors.Is(err, klock.ErrHeld) || klock.Permanent(err) || ctx.Err() != nil || time.Now().After(until) {
			return nil, time.Time{}, nil // taken over, expired and taken: the pod's klock sees to it
		}
		select {
		case <-ctx.Done():
			return nil, time.Time{}, nil
		case <-time.After(cfg.RetryPeriod):
		}
	}
}

// reservedSince returns when the lock was reserved for pod, zero if no
// slot of it is: the time the last leader wrote as the slot's
// acquireTime, which a join keeps, and never later than now.
func reservedSince(ctx context.Context, leases klock.LeaseClient, pod *corev1.Pod, cfg klock.Config) (time.Time, error) {
	for _, name := range klock.SlotNames(cfg.Name, cfg.MaxHolders) {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return time.Time{}, err
		}
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == pod.Name && l.Annotations[klock.AnnotationReservation] == string(pod.UID) {
			since := time.Now()
			if l.Spec.AcquireTime != nil && l.Spec.AcquireTime.Time.Before(since) {
				since = l.Spec.AcquireTime.Time
			}
			return since, nil
		}
	}
	return time.Time{}, nil
}

// keep renews the reservation until the pod's klock takes it over, and
// releases it when the pod has not started within startTimeout or is
// gone.
func (r *Reconciler) keep(ctx context.Context, pod *corev1.Pod, h *klock.Hold, name string, left, startTimeout time.Duration) error {
	timer := time.NewTimer(left)
	defer timer.Stop()
	select {
	case <-h.Lost():
		if !errors.Is(h.Err(), klock.ErrTakenOver) {
			r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonNotReserved, "Reserve",
				"The reservation of lock %s was lost (%v): the pod's klock waits for the lock itself", name, h.Err())
		}
		return nil
	case <-timer.C:
		release(h)
		if errors.Is(h.Err(), klock.ErrTakenOver) {
			return nil // the pod's klock came at the last moment
		}
		reservationsExpired.Inc()
		r.Events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonReservationExpired, "Release",
			"Released lock %s: the pod's klock did not start within %s of its reservation (klock.io/start-timeout); it waits for the lock like any other when it starts", name, startTimeout)
		return nil
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), errShutdown) {
			h.HandOver() // the next leader adopts it, or it expires
		} else {
			release(h)
		}
		return nil
	}
}

// release gives a reservation back, unless its pod's klock has taken it
// over meanwhile.
func release(h *klock.Hold) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.Release(ctx)
}

// ungate removes klock's scheduling gate from the pod, conditionally on
// the version read (the gates are one list), reading the pod again after
// a conflict, and retrying other errors for up to within.
func (r *Reconciler) ungate(ctx context.Context, pod *corev1.Pod, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	cur := pod.DeepCopy()
	for attempt := 0; ; attempt++ {
		if !wrap.Gated(cur) {
			return nil
		}
		next := cur.DeepCopy()
		next.Spec.SchedulingGates = slices.DeleteFunc(next.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == wrap.SchedulingGate })
		err := r.Client.Patch(ctx, next, client.MergeFromWithOptions(cur, client.MergeFromWithOptimisticLock{}))
		switch {
		case err == nil:
			return nil
		case apierrors.IsNotFound(err):
			return errPodGone
		case ctx.Err() != nil:
			return fmt.Errorf("cannot remove the scheduling gate %s: %w", wrap.SchedulingGate, err)
		}
		if !apierrors.IsConflict(err) {
			ctrl.LoggerFrom(ctx).V(1).Info("Removing the gate failed; retrying", "err", err.Error())
			select {
			case <-ctx.Done():
				return fmt.Errorf("cannot remove the scheduling gate %s: %w", wrap.SchedulingGate, err)
			case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second)):
			}
		}
		if err := r.API.Get(ctx, client.ObjectKeyFromObject(pod), cur); err != nil {
			if apierrors.IsNotFound(err) {
				return errPodGone
			}
			continue // read again, or give up when ctx ends
		}
		if cur.UID != pod.UID {
			return errPodGone
		}
	}
}

func holderText(h string) string {
	if h == "" {
		return "nobody: the waiters ahead come first"
	}
	return h
}
