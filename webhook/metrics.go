package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Outcomes of an admission, for the metrics.
const (
	outcomeSkipped = "skipped" // nothing for klock to do
	outcomeWrapped = "wrapped" // changed: a pod wrapped, a template annotated
	outcomeDenied  = "denied"  // the user must fix something
	outcomeError   = "error"   // undecodable input or a failure of ours
)

var (
	admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "klock_webhook_admissions_total",
		Help: "Admission requests handled, by kind of object and outcome.",
	}, []string{"kind", "outcome"})
	admissionSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "klock_webhook_admission_duration_seconds",
		Help:    "Time to handle an admission request, by kind of object and outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"kind", "outcome"})
)

func init() {
	metrics.Registry.MustRegister(admissions, admissionSeconds)
}

func observe(kind, outcome string, start time.Time) {
	admissions.WithLabelValues(kind, outcome).Inc()
	admissionSeconds.WithLabelValues(kind, outcome).Observe(time.Since(start).Seconds())
}
