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
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/wrap"
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
		p.Annotations = map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationWait: "10m", wrap.AnnotationConflictExitCode: "0"}
	}
	return p
}

// BenchmarkWebhookMutation: the pod handler in process, from the raw
// AdmissionRequest to the patch (decode, check, mutate, diff).
func BenchmarkWebhookMutation(b *testing.B) {
	h := webhook.NewPodHandler(webhook.Scheme(), wrap.Options{Image: "klock:bench"}, nil, nil)
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
	job := policyJob(b, ns)
	create := func(p *corev1.Pod) time.Duration {
		start := time.Now()
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if wrapped := got.Annotations[wrap.AnnotationInjected] != ""; wrapped != (p.Annotations != nil || p.Labels["tier"] == "batch") {
			b.Fatalf("pod %s: wrapped %v", p.Name, wrapped)
		}
		return time.Since(start)
	}
	var plain, wrapped, byPolicy []time.Duration
	for i := range 200 { // interleaved, so that all see the same machine
		plain = append(plain, create(cronJobPod(fmt.Sprintf("p-plain-%d", i), false)))
		wrapped = append(wrapped, create(cronJobPod(fmt.Sprintf("p-wrapped-%d", i), true)))
		p := cronJobPod(fmt.Sprintf("p-policy-%d", i), false)
		p.Labels["tier"] = "batch"
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID, Controller: ptr.To(true)}}
		byPolicy = append(byPolicy, create(p))
	}
	report(b, "create-plain", plain)
	report(b, "create-wrapped", wrapped)
	report(b, "create-by-policy", byPolicy)
	p50 := func(s []time.Duration) time.Duration { return s[len(s)/2] } // sorted by report
	overhead := p50(wrapped) - p50(plain)
	b.ReportMetric(ms(overhead), "overhead-p50-ms")
	fmt.Printf("%-28s %.1fms\n", "webhook overhead (p50)", ms(overhead))
	fmt.Printf("%-28s %.1fms\n", "by a policy, overhead (p50)", ms(p50(byPolicy)-p50(plain)))

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

// policyJob makes a ClusterLockPolicy that selects the pods labelled
// tier=batch in ns, and the CronJob and Job such pods belong to; it waits
// until the policy is Ready.
func policyJob(b *testing.B, ns string) *batchv1.Job {
	ctx := context.Background()
	c, err := client.New(cp.Config, client.Options{Scheme: webhook.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
	policy := &klockv1alpha1.ClusterLockPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			Selector:          &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "batch"}},
			WorkloadKinds:     []klockv1alpha1.WorkloadKind{klockv1alpha1.CronJob},
			Wait:              "10m",
		},
	}
	if err := c.Create(ctx, policy); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Delete(ctx, policy) })
	framework.Eventually(b, 30*time.Second, "the policy Ready", func() bool {
		return c.Get(ctx, client.ObjectKeyFromObject(policy), policy) == nil && meta.IsStatusConditionTrue(policy.Status.Conditions, klockv1alpha1.ConditionReady)
	})
	template := corev1.PodTemplateSpec{Spec: cronJobPod("t", false).Spec}
	template.Spec.RestartPolicy = corev1.RestartPolicyNever
	cronJob, err := cp.Client.BatchV1().CronJobs(ns).Create(ctx, &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly"},
		Spec:       batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template}}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	job, err := cp.Client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly-29000000", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "batch/v1", Kind: "CronJob", Name: cronJob.Name, UID: cronJob.UID, Controller: ptr.To(true)},
		}},
		Spec: batchv1.JobSpec{Template: template},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return job
}
