package cli

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klock-io/klock/klock"
)

// durationValue is a flag.Value for a duration written the way Go writes
// them (1m30s) or as a number of seconds (90, 1.5), as flock(1) takes them.
type durationValue struct{ d *time.Duration }

// String is "0" for zero, which help output takes for "no default worth
// printing": the usage texts say what zero means.
func (v durationValue) String() string {
	if *v.d == 0 {
		return "0"
	}
	return v.d.String()
}
func (v durationValue) Type() string { return "duration" }

func (v durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

// ParseDuration parses a duration as klock's flags do, so that other front
// ends, such as the admission webhook's annotations that are not klock
// flags, take durations written the same way.
func ParseDuration(s string) (time.Duration, error) { return parseDuration(s) }

func parseDuration(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(secs) || secs < 0 || secs > float64(1<<62)/float64(time.Second) {
			return 0, fmt.Errorf("%q is out of range: give a duration such as 30s, 5m or 1h30m, or a number of seconds", s)
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration: give one such as 30s, 5m or 1h30m, or a number of seconds", s)
	}
	return d, nil
}

// signals maps the names klock accepts (without the SIG prefix) to signals.
var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"TERM": syscall.SIGTERM, "ALRM": syscall.SIGALRM, "PIPE": syscall.SIGPIPE,
	"CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP, "TSTP": syscall.SIGTSTP,
	"WINCH": syscall.SIGWINCH, "ABRT": syscall.SIGABRT,
}

// signalValue is a flag.Value for a signal given by name (TERM, SIGTERM,
// term) or number (15).
type signalValue struct{ s *syscall.Signal }

func (v signalValue) Type() string { return "signal" }

func (v signalValue) String() string {
	for name, s := range signals {
		if s == *v.s {
			return name
		}
	}
	return strconv.Itoa(int(*v.s))
}

func (v signalValue) Set(s string) error {
	sig, err := parseSignal(s)
	if err != nil {
		return err
	}
	*v.s = sig
	return nil
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal number %d is out of range: give 1 to 64 or a name such as TERM", n)
		}
		return syscall.Signal(n), nil
	}
	if sig, ok := signals[strings.TrimPrefix(strings.ToUpper(s), "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: give a number or one of %s", s, strings.Join(slices.Sorted(maps.Keys(signals)), ", "))
}

// labelsValue is a flag.Value for k=v,k2=v2; repeating the flag adds labels.
type labelsValue struct{ m *map[string]string }

func (v labelsValue) Type() string { return "k=v,..." }

func (v labelsValue) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(*v.m)) {
		parts = append(parts, k+"="+(*v.m)[k])
	}
	return strings.Join(parts, ",")
}

func (v labelsValue) Set(s string) error {
	if *v.m == nil {
		*v.m = map[string]string{}
	}
	for pair := range strings.SplitSeq(s, ",") {
		k, val, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q is not key=value: give labels as key=value,key2=value2", pair)
		}
		(*v.m)[k] = val
	}
	return nil
}

// maxHoldersValue is a flag.Value for --max-holders: a whole number from 1
// to klock.MaxMaxHolders.
type maxHoldersValue struct{ n *int }

func (v maxHoldersValue) String() string { return strconv.Itoa(*v.n) }
func (v maxHoldersValue) Type() string   { return "int" }

func (v maxHoldersValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > klock.MaxMaxHolders {
		return fmt.Errorf("%q is not a number of holders: give a whole number from 1 to %d", s, klock.MaxMaxHolders)
	}
	*v.n = n
	return nil
}

// orderValue is a flag.Value for --order.
type orderValue struct{ o *klock.Order }

func (v orderValue) String() string { return string(*v.o) }
func (v orderValue) Type() string   { return "order" }

func (v orderValue) Set(s string) error {
	switch o := klock.Order(s); o {
	case klock.OrderFIFO, klock.OrderAny:
		*v.o = o
		return nil
	}
	return fmt.Errorf("%q is not an order: give fifo (first come, first served) or any (waiters race)", s)
}
