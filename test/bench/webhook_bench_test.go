package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/klock-io/klock/webhook"
)

// cronJobPod is what a CronJob's Job makes: one container with a command.
func cronJobPod(name string, annotated bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"job-name": "nightly-29000000"}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyOnFailure,
			Containers: []corev1.Container{{
				Name: "report", Image: "registry.example.com/reports:v3",
				Command: []string{"/bin/report"}, Args: []string{"--since", "24h", "--out", "/data"},
				Env: []corev1.EnvVar{{Name: "TZ", Value: "UTC"}},
			}},
		},
	}
	if annotated {
		p.Annotations = map[string]string{webhook.AnnotationLease: "nightly", webhook.AnnotationWait: "10m", webhook.AnnotationConflictExitCode: "0"}
	}
	return p
}

// BenchmarkWebhookMutation: the pod handler in process, from the raw
// AdmissionRequest to the patch (decode, check, mutate, diff).
func BenchmarkWebhookMutation(b *testing.B) {
	h := webhook.NewPodHandler(webhook.Scheme(), webhook.Options{Image: "klock:bench"}, nil, nil)
	raw, err := json.Marshal(cronJobPod("p", true))
	if err != nil {
		b.Fatal(err)
	}
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Namespace: "ns",
		Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object: runtime.RawExtension{Raw: raw},
	}}
	const n = 20000
	samples := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		resp := h.Handle(context.Background(), req)
		samples = append(samples, time.Since(start))
		if !resp.Allowed || len(resp.Patches) == 0 {
			b.Fatalf("not wrapped: %+v", resp.Result)
		}
	}
	report(b, "mutation-in-process", samples)
}

// BenchmarkWebhookPodCreate: creating a pod through the real API server,
// annotated (the webhook wraps it and checks Lease permissions) and not
// (the API server skips the webhook).
func BenchmarkWebhookPodCreate(b *testing.B) {
	ns := namespace(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := cp.ServeWebhook(ctx, "klock:bench"); err != nil {
		b.Fatal(err)
	}
	if err := cp.GrantLeases(ctx, ns, "default"); err != nil {
		b.Fatal(err)
	}
	pods := cp.Client.CoreV1().Pods(ns)
	create := func(annotated bool, i int) time.Duration {
		start := time.Now()
		if _, err := pods.Create(ctx, cronJobPod(fmt.Sprintf("p-%v-%d", annotated, i), annotated), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var plain, wrapped []time.Duration
	for i := range 200 { // interleaved, so that both see the same machine
		plain = append(plain, create(false, i))
		wrapped = append(wrapped, create(true, i))
	}
	report(b, "create-plain", plain)
	report(b, "create-wrapped", wrapped)
	p50 := func(s []time.Duration) time.Duration { return s[len(s)/2] } // sorted by report
	overhead := p50(wrapped) - p50(plain)
	b.ReportMetric(ms(overhead), "overhead-p50-ms")
	fmt.Printf("%-28s %.1fms\n", "webhook overhead (p50)", ms(overhead))

	// Throughput: 8 clients creating wrapped pods for 5 seconds.
	var created atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(5 * time.Second)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				if _, err := pods.Create(ctx, cronJobPod(fmt.Sprintf("t-%d-%d", w, i), true), metav1.CreateOptions{}); err != nil {
					b.Error(err)
					return
				}
				created.Add(1)
			}
		})
	}
	wg.Wait()
	perSecond := float64(created.Load()) / 5
	b.ReportMetric(perSecond, "wrapped-pods/s")
	fmt.Printf("%-28s %.0f pods/s (8 clients, through the API server)\n", "admission throughput", perSecond)
}
