package klock

import (
	"errors"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

var (
	// ErrHeld is matched (errors.Is) by the error of an acquisition that
	// found the Lease held by somebody else.
	ErrHeld = errors.New("lease is held by another holder")
	// ErrLost is matched by Hold.Err once the Lease could not be renewed in
	// time or was taken by somebody else.
	ErrLost = errors.New("lease lost")
	// ErrTakenOver is matched by the Hold.Err of a reservation
	// (Config.Reservation) once the process it was made for has taken the
	// Lease over as its own hold, and by an acquisition of a reservation
	// that finds that done already. It matches ErrLost too: the
	// reservation's Hold ends there, with nothing to release.
	ErrTakenOver = errors.New("reservation taken over by its holder")
	// ErrKeepPlace, as the cause (context.WithCancelCause) that ends a
	// waiting acquisition, makes the waiter keep its place in the lock's
	// queue instead of leaving it: another process goes on waiting under
	// the same identity (a new leader of the gate controller, or the
	// pod's own klock), and finds the place its own. A place nobody takes
	// up is dropped after its queue TTL, as a dead waiter's.
	ErrKeepPlace = errors.New("the wait goes on in another process under the same identity")
)

// takenOverError is ErrTakenOver with the Lease it concerns.
type takenOverError struct{ namespace, name, holder string }

func (e *takenOverError) Error() string {
	return fmt.Sprintf("lease %s/%s: the reservation for %q was taken over by its holder", e.namespace, e.name, e.holder)
}

func (e *takenOverError) Is(target error) bool { return target == ErrTakenOver || target == ErrLost }

// HeldError reports that the Lease was held by another holder when an
// acquisition gave up.
type HeldError struct {
	Namespace, Name string
	Holder          string
	// Until is when the Lease expires unless the holder renews it or gives it up.
	Until time.Time
	// Cause is why a blocking acquisition stopped waiting (context error).
	Cause error
	// Waiters is how many waiters were ahead in the lock's queue.
	Waiters int
}

func (e *HeldError) Error() string {
	var msg string
	switch {
	case e.Holder == "" && e.Waiters > 0:
		msg = fmt.Sprintf("lock %s/%s has %s ahead", e.Namespace, e.Name, waiters(e.Waiters))
	case strings.Contains(e.Holder, ", "):
		msg = fmt.Sprintf("lock %s/%s is held by %s", e.Namespace, e.Name, e.Holder)
	default:
		msg = fmt.Sprintf("lease %s/%s is held by %q", e.Namespace, e.Name, e.Holder)
	}
	if e.Waiters > 0 && e.Holder != "" {
		msg += " with " + waiters(e.Waiters) + " ahead"
	}
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

func (e *HeldError) Is(target error) bool { return target == ErrHeld }
func (e *HeldError) Unwrap() error        { return e.Cause }

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// Permanent reports whether err, returned by an acquisition, is one that
// trying again cannot fix: no permission, a lock in use under another
// holder count, a request the API server rejects.
func Permanent(err error) bool { return permanent(err) }

// permanent tells errors that retrying cannot fix (no permission, no
// namespace, a request the server rejects) from passing ones.
func permanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) ||
		apierrors.IsNotFound(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsInvalid(err) || apierrors.IsMethodNotSupported(err)
}

// describe turns an API error into a sentence that says what to do.
func describe(err error, c *Config, verb string) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed to %s lease %s/%s: grant get, create, update and watch (and delete for cleanup) on leases.coordination.k8s.io in namespace %s: %w", verb, c.Namespace, c.Name, c.Namespace, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the API server rejected the credentials: check the kubeconfig or service account token: %w", err)
	case apierrors.IsNotFound(err) && verb == "create":
		return fmt.Errorf("cannot create lease %s/%s: %w (does the namespace exist?)", c.Namespace, c.Name, err)
	}
	return fmt.Errorf("cannot %s lease %s/%s: %w", verb, c.Namespace, c.Name, err)
}

func waiters(n int) string {
	if n == 1 {
		return "1 waiter"
	}
	return fmt.Sprintf("%d waiters", n)
}
