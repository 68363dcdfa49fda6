package klock

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"
)

const (
	// ManagedByLabel and ManagedByValue mark every Lease that klock creates.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "klock"

	// The defaults are client-go leader election's, so that a klock holder
	// and a client-go contender agree on how long a silent holder is trusted.
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second

	// maxLeaseDuration is the most leaseDurationSeconds can hold; a longer
	// duration would be written wrapped around, as a short one.
	maxLeaseDuration = math.MaxInt32 * time.Second

	// resyncPeriod is how long a waiter trusts a watch that delivers nothing
	// before it reads the Lease again. A live holder renews every few
	// seconds, so a healthy watch is never silent that long.
	resyncPeriod = time.Minute
)

// Config describes one contender for one Lease. The zero value of every
// optional field means its documented default.
type Config struct {
	// Name and Namespace of the Lease. Name is required; Namespace defaults
	// to "default".
	Name      string
	Namespace string

	// Identity is written to spec.holderIdentity. Two contenders with the
	// same identity share the Lease (re-entrant), so it must be unique per
	// contender unless sharing is meant. Defaults to DefaultIdentity().
	Identity string

	// LeaseDuration is how long others wait after the record last changed
	// before they take the Lease over (whole seconds, at least 1s).
	// Default: 15s, or 1.5 times RenewDeadline rounded up to a whole second
	// when only that is set and it is 10s or more.
	LeaseDuration time.Duration
	// RenewDeadline is how long a holder keeps trying to renew before it
	// gives the Lease up as lost. It must be shorter than LeaseDuration, so
	// that the loss is reported before anybody else can take the Lease.
	// Default: two thirds of LeaseDuration (10s of 15s).
	RenewDeadline time.Duration
	// RetryPeriod is the interval between retries after an API error, and
	// between reads of the Lease when it cannot be watched. Default: a
	// fifth of RenewDeadline (2s of 10s). The defaults keep client-go's
	// proportions, 15 : 10 : 2, whichever of the three is set.
	RetryPeriod time.Duration
	// RenewInterval is the interval between renewals; defaults to
	// RetryPeriod, as in client-go. It must be below RenewDeadline, so that
	// a holder tries to renew more than once before it gives up.
	RenewInterval time.Duration

	// Labels are put on the Lease when it is created or acquired, next to
	// app.kubernetes.io/managed-by=klock, which is always set on creation.
	Labels map[string]string

	// DisableCreate makes acquisition fail when the Lease does not exist,
	// instead of creating it.
	DisableCreate bool
	// DeleteOnRelease deletes the Lease on release instead of clearing its
	// holder. The delete is guarded by UID and resourceVersion
	// preconditions, so a Lease somebody else took meanwhile is left alone.
	DeleteOnRelease bool

	// Logger receives debug messages; discarded when unset.
	Logger logr.Logger

	// MaxHolders is how many contenders may hold the lock at once: a
	// counting lock. 1 (the default) is a mutex on the one Lease Name;
	// with N, holders take one of the Leases SlotNames gives, each with a
	// fencing token of its own. Every contender of a lock must give the
	// same MaxHolders: a contender that finds the lock held under another
	// count is refused (see the README). At most MaxMaxHolders.
	MaxHolders int
	// Order is the order in which waiters get the lock: OrderFIFO (the
	// default) lets them in the order they started waiting, through a
	// queue kept in the Lease QueueName; OrderAny lets them race.
	Order Order
	// QueueTTL is how long a waiter's place in the queue stays without a
	// sign of life: a waiter renews it every QueueTTL/3, and one that has
	// died loses it QueueTTL after its last renewal. Default 60s.
	QueueTTL time.Duration
	// Reservation, when set, makes this contender reserve the lock for
	// Identity instead of holding it for itself: for a process under
	// Identity that has yet to start, such as a pod that waits for its
	// lock at the scheduler. Every write of its marks the Lease with
	// AnnotationReservation set to this value. The process under Identity
	// takes a reserved Lease over with its first write, which clears the
	// mark, as a new acquisition of its own (not a re-entrant one), with
	// a fencing token above the reservation's; the reservation's Hold then
	// ends with an error matching ErrTakenOver, and an acquisition through
	// this Config returns one. Until the takeover the Lease stays held
	// under Identity, so no other contender gets in between; if either
	// side dies, the Lease expires a lease duration after its last write.
	Reservation string
	// Clock gives the times klock writes into the Lease; the real clock
	// when unset. Expiry is never judged by comparing them with another
	// machine's clock, so contenders whose clocks disagree still exclude
	// each other; tests set a skewed clock to prove it.
	Clock clock.PassiveClock
}

// Order is the order in which waiters get a lock.
type Order string

const (
	// OrderFIFO lets waiters in first come, first served.
	OrderFIFO Order = "fifo"
	// OrderAny lets waiters race: whoever writes first after a release
	// wins.
	OrderAny Order = "any"
)

const (
	// MaxMaxHolders bounds MaxHolders: each holder slot is a Lease that
	// every waiter watches.
	MaxMaxHolders = 100
	// DefaultQueueTTL is how long a silent waiter keeps its place.
	DefaultQueueTTL = time.Minute
	// queueSuffix ends the name of a lock's queue Lease.
	queueSuffix = "-queue"
)

// SlotNames returns the names of the Leases a lock of name with maxHolders
// holders uses for its holders: name itself, then name-1 to
// name-<maxHolders-1>. A mutex uses name alone, as client-go's LeaseLock
// does.
func SlotNames(name string, maxHolders int) []string {
	names := []string{name}
	for i := 1; i < maxHolders; i++ {
		names = append(names, fmt.Sprintf("%s-%d", name, i))
	}
	return names
}

// QueueName returns the name of the Lease in which the waiters of lock name
// keep their places, first come first served.
func QueueName(name string) string { return name + queueSuffix }

// LeaseNames returns every Lease a lock touches: its holder slots and, with
// OrderFIFO, its queue. Permissions can be granted by these names alone.
func LeaseNames(name string, maxHolders int, order Order) []string {
	names := SlotNames(name, max(maxHolders, 1))
	if order != OrderAny {
		names = append(names, QueueName(name))
	}
	return names
}

// DefaultIdentity returns an identity unique to this process: the host name
// (the pod name inside a pod), the process ID and a random suffix, so that a
// restarted process with a recycled PID is still someone else.
func DefaultIdentity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return fmt.Sprintf("%s_%d_%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Validate reports the first setting that New would reject, as a sentence
// that names the setting, the value and what is accepted.
func (c Config) Validate() error {
	_, err := c.complete()
	return err
}

// Complete returns the configuration as New would use it, with every
// default filled in (the timings derived from those given), or the error
// Validate reports.
func (c Config) Complete() (Config, error) {
	return c.complete()
}

// complete fills in defaults and validates the result. Every error names the
// setting, the value and what is accepted.
func (c Config) complete() (Config, error) {
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.Identity == "" {
		c.Identity = DefaultIdentity()
	}
	c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = completeTimings(c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)
	if c.RenewInterval == 0 {
		c.RenewInterval = c.RetryPeriod
	}
	if c.Logger.GetSink() == nil {
		c.Logger = logr.Discard()
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.MaxHolders == 0 {
		c.MaxHolders = 1
	}
	if c.Order == "" {
		c.Order = OrderFIFO
	}
	if c.QueueTTL == 0 {
		c.QueueTTL = DefaultQueueTTL
	}

	if c.Name == "" {
		return c, fmt.Errorf("lease name is empty: give the name of the Lease to lock")
	}
	if errs := validation.IsDNS1123Subdomain(c.Name); len(errs) > 0 {
		return c, fmt.Errorf("invalid lease name %q: %s", c.Name, strings.Join(errs, "; "))
	}
	if c.MaxHolders < 1 || c.MaxHolders > MaxMaxHolders {
		return c, fmt.Errorf("invalid max holders %d: must be from 1 to %d", c.MaxHolders, MaxMaxHolders)
	}
	if c.Order != OrderFIFO && c.Order != OrderAny {
		return c, fmt.Errorf("invalid order %q: must be %q (first come, first served) or %q (waiters race)", c.Order, OrderFIFO, OrderAny)
	}
	for _, n := range LeaseNames(c.Name, c.MaxHolders, c.Order)[1:] {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return c, fmt.Errorf("invalid lease name %q: the lock also uses the Lease %q, which is not a valid name: %s", c.Name, n, strings.Join(errs, "; "))
		}
	}
	if c.QueueTTL < 3*time.Second || c.QueueTTL > maxQueueTTL {
		return c, fmt.Errorf("invalid queue TTL %s: must be from 3s (a waiter renews its place every third of it) to %s", c.QueueTTL, maxQueueTTL)
	}
	if c.MaxHolders > 1 && c.DeleteOnRelease {
		return c, fmt.Errorf("a counting lock (max holders %d) keeps its Leases, which record the count: cleanup (delete on release) works only with max holders 1", c.MaxHolders)
	}
	if errs := validation.IsDNS1123Label(c.Namespace); len(errs) > 0 {
		return c, fmt.Errorf("invalid namespace %q: %s", c.Namespace, strings.Join(errs, "; "))
	}
	if c.LeaseDuration < time.Second || c.LeaseDuration%time.Second != 0 {
		return c, fmt.Errorf("invalid lease duration %s: must be a whole number of seconds, at least 1s (Lease stores whole seconds)", c.LeaseDuration)
	}
	if c.LeaseDuration > maxLeaseDuration {
		return c, fmt.Errorf("invalid lease duration %s: must be at most %s (Lease stores the seconds as a 32-bit number)", c.LeaseDuration, maxLeaseDuration)
	}
	if c.RenewDeadline <= 0 || c.RenewDeadline >= c.LeaseDuration {
		return c, fmt.Errorf("invalid renew deadline %s: must be above 0 and below the lease duration %s, so that a holder notices the loss before the lease can expire", c.RenewDeadline, c.LeaseDuration)
	}
	if c.RetryPeriod <= 0 || c.RetryPeriod >= c.RenewDeadline {
		return c, fmt.Errorf("invalid retry period %s: must be above 0 and below the renew deadline %s, so that a holder tries to renew more than once", c.RetryPeriod, c.RenewDeadline)
	}
	if c.RenewInterval <= 0 || c.RenewInterval >= c.RenewDeadline {
		return c, fmt.Errorf("invalid renew interval %s: must be above 0 and below the renew deadline %s, so that a holder tries to renew more than once", c.RenewInterval, c.RenewDeadline)
	}
	for k, v := range c.Labels {
		if k == ManagedByLabel {
			return c, fmt.Errorf("invalid label %s=%s: the key %s is reserved for klock", k, v, ManagedByLabel)
		}
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return c, fmt.Errorf("invalid label key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return c, fmt.Errorf("invalid value %q for label %s: %s", v, k, strings.Join(errs, "; "))
		}
	}
	return c, nil
}

// completeTimings fills in the timings left zero from those given, in
// client-go's proportions (lease duration 15 : renew deadline 10 : retry
// period 2), so that setting one alone, such as a 3s lease, makes a
// consistent set. Timings given explicitly are kept as they are, and
// complete rejects them if they contradict each other.
func completeTimings(lease, renew, retry time.Duration) (time.Duration, time.Duration, time.Duration) {
	if renew == 0 {
		switch {
		case lease != 0:
			renew = lease * 2 / 3
		case retry != 0:
			renew = max(DefaultRenewDeadline, retry*5)
		default:
			renew = DefaultRenewDeadline
		}
	}
	if lease == 0 {
		// Whole seconds, as the Lease stores them.
		lease = max(DefaultLeaseDuration, (renew*3/2 + time.Second - 1).Truncate(time.Second))
	}
	if retry == 0 {
		retry = renew / 5
	}
	return lease, renew, retry
}
