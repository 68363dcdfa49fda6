package chaos

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// contentionSize is how many klock processes contend at once and how
// many acquisitions they make in all.
func contentionSize() (contending, total int) {
	contending, total = 10, 100
	if *full {
		contending, total = 50, 2000
	}
	if *contenders > 0 {
		contending = *contenders
	}
	if *acquisitions > 0 {
		total = *acquisitions
	}
	return contending, total
}

// a. Many klock processes, each with its own default identity, contend for
// one Lease with klock's default timings: each of them runs klock again
// and again, a short command each time, so that there are always many
// waiters when the Lease is released. All of them reach the API server
// through a FaultProxy that injects nothing and counts the requests.
// Asserted: every run exits 0, no two commands are ever inside the lock at
// once (flock and marker file), fencing tokens strictly increase, every
// run had an identity of its own, the Lease ends released, and no handoff
// (from a command's end to the next command's start) takes longer than a
// retry period (+ slack): a release is never missed.
func TestContention(t *testing.T) {
	s := newScenario(t)
	n, total := contentionSize()
	per := (total + n - 1) / n
	total = n * per
	proxy := s.faultProxy("contenders")
	marker := s.path("marker")

	var mu sync.Mutex
	var failures []string
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, msg)
	}
	started := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for j := range per {
				name := fmt.Sprintf("p%02d-%04d", i, j)
				argv := append([]string{"--kubeconfig", proxy.Kubeconfig, "-n", s.ns, "-l", "contended", "--"}, s.probe(name, "-marker", marker)...)
				k, err := startKlock(name, s.path(name+".out"), argv)
				if err != nil {
					fail(err.Error())
					return
				}
				select {
				case <-k.exited:
				case <-time.After(10 * time.Minute):
					k.kill()
					fail(fmt.Sprintf("klock %s did not exit within 10 minutes:\n%s", name, k.output()))
					return
				}
				if k.code != 0 {
					fail(fmt.Sprintf("klock %s exited %d:\n%s", name, k.code, k.output()))
					continue
				}
				_ = os.Remove(k.out) // thousands of them
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(started)
	for i, f := range failures {
		if i == 10 {
			t.Errorf("... and %d more failed runs", len(failures)-10)
			break
		}
		t.Error(f)
	}

	events := s.events()
	checkExclusion(t, events)
	starts, ends := 0, 0
	identities := map[string]bool{}
	for _, e := range events {
		switch e.Kind {
		case "start":
			starts++
			identities[e.Fields[1]] = true
		case "end":
			ends++
		}
	}
	if starts != total || ends != total {
		t.Errorf("%d commands started and %d ended, want %d each", starts, ends, total)
	}
	if len(identities) != starts {
		t.Errorf("%d runs had %d identities: each default identity must be a process's own", starts, len(identities))
	}
	if l := s.lease("contended"); holder(l) != "" {
		t.Errorf("the Lease is held by %q after every run ended, want released", holder(l))
	}
	gaps := handoffGaps(events)
	if len(gaps) > 0 {
		atMost(t, "the longest handoff", gaps[len(gaps)-1], defaults.retry+slack)
	}

	counts := proxy.Counts()
	var requests int
	var verbs []string
	for verb, c := range counts {
		requests += c
		verbs = append(verbs, verb)
	}
	sort.Strings(verbs)
	var perVerb []string
	for _, v := range verbs {
		perVerb = append(perVerb, fmt.Sprintf("%s %.2f", v, float64(counts[v])/float64(total)))
	}
	t.Logf("%d acquisitions by %d processes in %s; requests %v", total, n, elapsed, counts)
	var handoff string
	if len(gaps) > 0 {
		handoff = fmt.Sprintf("; handoff p50 %s, p99 %s, max %s", ms(gaps[len(gaps)/2]), ms(gaps[len(gaps)*99/100]), ms(gaps[len(gaps)-1]))
	}
	report(t, fmt.Sprintf("a. contention: %d klock processes, %d acquisitions", n, total),
		fmt.Sprintf("%d overlaps; tokens strictly increasing", countKind(events, "overlap")),
		fmt.Sprintf("0 overlaps; handoff ≤ retry %s (+%s slack)", defaults.retry, slack),
		fmt.Sprintf("%.1f acquisitions/s; %.1f API requests per acquisition (%s)%s",
			float64(total)/elapsed.Seconds(), float64(requests)/float64(total), strings.Join(perVerb, ", "), handoff))
}

// handoffGaps returns, sorted, the time from each command's end to the
// next command's start.
func handoffGaps(events []event) []time.Duration {
	var gaps []time.Duration
	var lastEnd time.Time
	for _, e := range events {
		switch e.Kind {
		case "end":
			lastEnd = e.At
		case "start":
			if !lastEnd.IsZero() {
				gaps = append(gaps, e.At.Sub(lastEnd))
			}
		}
	}
	slices.Sort(gaps)
	return gaps
}

func countKind(events []event, kind string) int {
	n := 0
	for _, e := range events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}
