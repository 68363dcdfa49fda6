package gate

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	gatedPods = &lockGauge{GaugeVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "klock_gate_gated_pods",
		Help: "Pods held at the scheduler, waiting for their lock, by namespace and lock.",
	}, []string{"namespace", "lock"}), n: map[[2]string]int{}}
	gatedSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "klock_gate_gated_duration_seconds",
		Help:    "Time from a gated pod's creation until its lock was reserved for it and its gate removed.",
		Buckets: prometheus.ExponentialBuckets(0.25, 2, 16), // 0.25s to about 2h
	})
	reservationsExpired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "klock_gate_reservations_expired_total",
		Help: "Reservations released because their pod's klock did not start within its start timeout.",
	})
)

func init() {
	metrics.Registry.MustRegister(gatedPods, gatedSeconds, reservationsExpired)
}

// lockGauge is a gauge per namespace and lock whose series go away when
// they reach 0, so that locks used once do not stay in every scrape.
type lockGauge struct {
	*prometheus.GaugeVec
	mu sync.Mutex
	n  map[[2]string]int
}

func (g *lockGauge) add(namespace, lock string, d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := [2]string{namespace, lock}
	g.n[k] += d
	if g.n[k] <= 0 {
		delete(g.n, k)
		g.DeleteLabelValues(namespace, lock)
		return
	}
	g.WithLabelValues(namespace, lock).Set(float64(g.n[k]))
}
