package framework

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ProbeEvent is a line of a probe log (test/internal/probe): what happened
// (start, end, signal, overlap), to which probe, when, and what the probe
// recorded with it (for a start: the fencing token and holder identity).
type ProbeEvent struct {
	Kind, Name string
	At         time.Time
	Fields     []string
}

// ReadProbeLog reads a probe log in time order; a log not yet written is
// empty. Many probes append to one log, each line with one write.
func ReadProbeLog(path string) ([]ProbeEvent, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var events []ProbeEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Fields(sc.Text())
		if len(parts) < 3 {
			return nil, fmt.Errorf("malformed probe log line %q", sc.Text())
		}
		ns, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed time in probe log line %q", sc.Text())
		}
		events = append(events, ProbeEvent{Kind: parts[0], Name: parts[1], At: time.Unix(0, ns), Fields: parts[3:]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].At.Before(events[j].At) })
	return events, nil
}

// FindProbeEvent returns the first event of kind for the probe name.
func FindProbeEvent(events []ProbeEvent, kind, name string) (ProbeEvent, bool) {
	for _, e := range events {
		if e.Kind == kind && e.Name == name {
			return e, true
		}
	}
	return ProbeEvent{}, false
}
