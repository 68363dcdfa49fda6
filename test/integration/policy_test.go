package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/leaseaccess"
	webhookpolicy "github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// policyClient reads and writes ClusterLockPolicies.
func policyClient(t *testing.T) client.Client {
	t.Helper()
	c, err := client.New(cp.Config, client.Options{Scheme: webhook.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// labelledNamespace creates a namespace with labels.
func labelledNamespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	ns := namespace(t)
	n, err := cp.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range labels {
		metav1.SetMetaDataLabel(&n.ObjectMeta, k, v)
	}
	if _, err := cp.Client.CoreV1().Namespaces().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// createPolicy creates p, deleted when the test ends, and waits until it
// is Ready: its entry is in the webhook configuration.
func createPolicy(t *testing.T, c client.Client, p *klockv1alpha1.ClusterLockPolicy) {
	t.Helper()
	ctx := context.Background()
	if err := c.Create(ctx, p); err != nil {
		t.Fatalf("creating ClusterLockPolicy %s: %v", p.Name, err)
	}
	t.Cleanup(func() { _ = c.Delete(ctx, p) })
	waitReady(t, c, p.Name)
}

func waitReady(t *testing.T, c client.Client, name string) *klockv1alpha1.ClusterLockPolicy {
	t.Helper()
	got := &klockv1alpha1.ClusterLockPolicy{}
	framework.Eventually(t, 30*time.Second, "ClusterLockPolicy "+name+" Ready for its generation", func() bool {
		if c.Get(context.Background(), client.ObjectKey{Name: name}, got) != nil {
			return false
		}
		cond := meta.FindStatusCondition(got.Status.Conditions, klockv1alpha1.ConditionReady)
		return cond != nil && cond.Status == metav1.ConditionTrue && cond.ObservedGeneration == got.Generation
	})
	return got
}

func policy(name string, spec klockv1alpha1.ClusterLockPolicySpec) *klockv1alpha1.ClusterLockPolicy {
	return &klockv1alpha1.ClusterLockPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

// ownedPod is a pod controlled by owner.
func ownedPod(name string, labels map[string]string, owner metav1.Object, kind, apiVersion string) *corev1.Pod {
	p := pod(name, nil, container("app", "work"))
	if name == "" {
		p.GenerateName = "pod-"
	}
	p.Labels = labels
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: owner.GetName(), UID: owner.GetUID(), Controller: ptr.To(true)}}
	return p
}

func wrappedLease(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	if p.Annotations[wrap.AnnotationInjected] == "" {
		return ""
	}
	return p.Annotations[wrap.AnnotationLease]
}

func TestClusterLockPolicyValidation(t *testing.T) {
	c := policyClient(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		spec klockv1alpha1.ClusterLockPolicySpec
		want string
	}{
		{"unknown-placeholder", klockv1alpha1.ClusterLockPolicySpec{Lease: "{job}"}, "spec.lease: Invalid value"},
		{"upper-case-lease", klockv1alpha1.ClusterLockPolicySpec{Lease: "Nightly"}, "must be a lease name of lower-case letters"},
		{"unclosed-placeholder", klockv1alpha1.ClusterLockPolicySpec{Lease: "x-{name"}, "with placeholders {namespace}, {kind}, {name} or {label:<key>}"},
		{"bad-wait", klockv1alpha1.ClusterLockPolicySpec{Wait: "soon"}, "spec.wait: Invalid value"},
		{"fractional-lease-duration", klockv1alpha1.ClusterLockPolicySpec{LeaseDuration: "1500ms"}, "must be a whole number of seconds, at least 1s"},
		{"deadline-above-duration", klockv1alpha1.ClusterLockPolicySpec{LeaseDuration: "10s", RenewDeadline: "20s"}, "renewDeadline must be below leaseDuration"},
		{"retry-above-the-deadline-the-lease-gives", klockv1alpha1.ClusterLockPolicySpec{LeaseDuration: "3s", RetryPeriod: "2s"}, "retryPeriod must be below renewDeadline"},
		{"retry-above-the-deadline-given", klockv1alpha1.ClusterLockPolicySpec{RenewDeadline: "2s", RetryPeriod: "2s"}, "retryPeriod must be below renewDeadline"},
		{"exit-code-256", klockv1alpha1.ClusterLockPolicySpec{ConflictExitCode: ptr.To(int32(256))}, "spec.conflictExitCode: Invalid value: 256"},
		{"negative-exit-code", klockv1alpha1.ClusterLockPolicySpec{ConflictExitCode: ptr.To(int32(-1))}, "spec.conflictExitCode: Invalid value: -1"},
		{"bad-signal", klockv1alpha1.ClusterLockPolicySpec{Signal: "SIGNOPE"}, `spec.signal: Unsupported value: "SIGNOPE"`},
		{"bad-kind", klockv1alpha1.ClusterLockPolicySpec{WorkloadKinds: []klockv1alpha1.WorkloadKind{"Pod"}}, `spec.workloadKinds[0]: Unsupported value: "Pod"`},
		{"counting-lock-with-cleanup", klockv1alpha1.ClusterLockPolicySpec{MaxHolders: 3, CleanupLease: true}, "cleanupLease works only with maxHolders 1"},
		{"too-many-holders", klockv1alpha1.ClusterLockPolicySpec{MaxHolders: 101}, "spec.maxHolders: Invalid value: 101"},
		{"negative-holders", klockv1alpha1.ClusterLockPolicySpec{MaxHolders: -1}, "spec.maxHolders: Invalid value: -1"},
		{"unknown-order", klockv1alpha1.ClusterLockPolicySpec{Order: "lifo"}, `spec.order: Unsupported value: "lifo"`},
		{"no-start-timeout", klockv1alpha1.ClusterLockPolicySpec{Gate: ptr.To(true), StartTimeout: &metav1.Duration{}}, `spec.startTimeout: Invalid value: "0s": must be a duration above 0 and at most 24h`},
		{"negative-start-timeout", klockv1alpha1.ClusterLockPolicySpec{StartTimeout: &metav1.Duration{Duration: -time.Minute}}, "must be a duration above 0 and at most 24h"},
		{"start-timeout-over-a-day", klockv1alpha1.ClusterLockPolicySpec{StartTimeout: &metav1.Duration{Duration: 25 * time.Hour}}, "must be a duration above 0 and at most 24h"},
		{strings.Repeat("n", 201), klockv1alpha1.ClusterLockPolicySpec{}, "metadata.name must be at most 200 characters"},
	} {
		t.Run(tc.name[:min(len(tc.name), 30)], func(t *testing.T) {
			err := c.Create(ctx, policy(tc.name, tc.spec))
			if err == nil {
				_ = c.Delete(ctx, policy(tc.name, tc.spec))
				t.Fatal("the API server accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}

	t.Run("a counting lock without cleanup is valid, and shows its count", func(t *testing.T) {
		p := policy("valid-counting", klockv1alpha1.ClusterLockPolicySpec{
			MaxHolders: 3, Order: "any", CleanupLease: false, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"none": "none"}},
		})
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, p) })
		var table metav1.Table
		err := cp.Client.Discovery().RESTClient().Get().AbsPath("/apis/klock.io/v1alpha1/clusterlockpolicies", p.Name).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Into(&table)
		if err != nil {
			t.Fatal(err)
		}
		column := slices.IndexFunc(table.ColumnDefinitions, func(d metav1.TableColumnDefinition) bool { return d.Name == "Max Holders" })
		if column < 0 || len(table.Rows) != 1 || fmt.Sprint(table.Rows[0].Cells[column]) != "3" {
			t.Errorf("kubectl get shows no Max Holders 3: columns %+v, rows %+v", table.ColumnDefinitions, table.Rows)
		}
	})

	t.Run("a valid policy gets the default lease", func(t *testing.T) {
		p := policy("valid-defaults", klockv1alpha1.ClusterLockPolicySpec{
			Wait: "1m30s", LeaseDuration: "20s", RenewDeadline: "15s", RetryPeriod: "3s", KillAfter: "0", ConflictExitCode: ptr.To(int32(0)),
			Gate: ptr.To(true), StartTimeout: &metav1.Duration{Duration: 24 * time.Hour},
			Lease: "", NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"none": "none"}},
		})
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, p) })
		if p.Spec.Lease != klockv1alpha1.DefaultLease {
			t.Errorf("lease = %q, want the default %q", p.Spec.Lease, klockv1alpha1.DefaultLease)
		}
	})
}

func TestClusterLockPolicy(t *testing.T) {
	ctx := context.Background()
	c := policyClient(t)
	team := map[string]string{"klock-test/team": "policy"}
	selected, other := labelledNamespace(t, team), namespace(t)
	batch := map[string]string{"tier": "batch"}

	webhookDown := startWebhookUntil(t)
	createPolicy(t, c, policy("batch", klockv1alpha1.ClusterLockPolicySpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
		Selector:          &metav1.LabelSelector{MatchLabels: batch},
		WorkloadKinds:     []klockv1alpha1.WorkloadKind{klockv1alpha1.CronJob, klockv1alpha1.Deployment},
		Wait:              "30s",
	}))
	createPolicy(t, c, policy("bare-pods", klockv1alpha1.ClusterLockPolicySpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
		Selector:          &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "bare"}},
		Lease:             "{namespace}.{label:app}",
		AllowSkip:         true,
	}))

	cronJob := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: selected},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: batch},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{container("app", "work")}, RestartPolicy: corev1.RestartPolicyOnFailure},
		}}}},
	}
	var err error
	if cronJob, err = cp.Client.BatchV1().CronJobs(selected).Create(ctx, cronJob, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The Job the CronJob controller would make, and a Job of its own.
	jobOf := func(name string, owner *batchv1.CronJob) *batchv1.Job {
		j := &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: batch},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{container("app", "work")}, RestartPolicy: corev1.RestartPolicyNever},
			}},
		}
		if owner != nil {
			j.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "CronJob", Name: owner.Name, UID: owner.UID, Controller: ptr.To(true)}}
		}
		got, err := cp.Client.BatchV1().Jobs(selected).Create(ctx, j, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	scheduled, standalone := jobOf("nightly-29000000", cronJob), jobOf("standalone", nil)
	pods := func(ns string) interface {
		Create(context.Context, *corev1.Pod, metav1.CreateOptions) (*corev1.Pod, error)
	} {
		return cp.Client.CoreV1().Pods(ns)
	}

	t.Run("a CronJob's Job's pod is wrapped under the CronJob's name", func(t *testing.T) {
		got, err := pods(selected).Create(ctx, ownedPod("nightly-29000000-abcde", batch, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != "cronjob-nightly" {
			t.Fatalf("lease %q, want cronjob-nightly; annotations %v", lease, got.Annotations)
		}
		if got.Annotations[wrap.AnnotationPolicy] != "batch" || !slices.Contains(got.Spec.Containers[0].Command, "--wait=30s") {
			t.Errorf("policy annotation %q, command %q", got.Annotations[wrap.AnnotationPolicy], got.Spec.Containers[0].Command)
		}
	})

	t.Run("a Job of no CronJob is not a kind the policy selects", func(t *testing.T) {
		got, err := pods(selected).Create(ctx, ownedPod("standalone-abcde", batch, standalone, "Job", "batch/v1"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != "" {
			t.Errorf("wrapped with lease %q", lease)
		}
	})

	t.Run("a pod whose ownerReference has another Job's uid is denied", func(t *testing.T) {
		// The author of a pod writes its ownerReferences: with the
		// scheduled Job's uid and the standalone Job's name, it must
		// neither pass as the CronJob's pod nor leave its own workload
		// in the owner cache under that uid.
		p := ownedPod("forged-owner", batch, standalone, "Job", "batch/v1")
		p.OwnerReferences[0].UID = scheduled.UID
		if _, err := pods(selected).Create(ctx, p, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "not the pod's owner") {
			t.Fatalf("err = %v, want a denial saying the ownerReference is not the pod's owner", err)
		}
		got, err := pods(selected).Create(ctx, ownedPod("nightly-29000000-fghij", batch, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != "cronjob-nightly" {
			t.Errorf("the CronJob's pod after the forged one: lease %q, want cronjob-nightly", lease)
		}
	})

	t.Run("pods the selectors do not match are untouched", func(t *testing.T) {
		for ns, labels := range map[string]map[string]string{other: batch, selected: {"tier": "web"}} {
			got, err := pods(ns).Create(ctx, ownedPod("unselected", labels, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if lease := wrappedLease(t, got); lease != "" {
				t.Errorf("pod in %s with labels %v wrapped with lease %q", ns, labels, lease)
			}
		}
	})

	t.Run("a pod's own options override the policy's", func(t *testing.T) {
		p := ownedPod("own-wait", batch, scheduled, "Job", "batch/v1")
		p.Annotations = map[string]string{wrap.AnnotationWait: "5s"}
		got, err := pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cmd := got.Spec.Containers[0].Command
		if wrappedLease(t, got) != "cronjob-nightly" || !slices.Contains(cmd, "--wait=5s") || slices.Contains(cmd, "--wait=30s") {
			t.Errorf("lease %q, command %q", got.Annotations[wrap.AnnotationLease], cmd)
		}
	})

	// A policy that pods may not skip decides the lease and the container:
	// otherwise a pod could run beside the others under a lease of its
	// own, or have klock wrap an idle sidecar.
	t.Run("a pod cannot escape the policy", func(t *testing.T) {
		p := ownedPod("own-lease", batch, scheduled, "Job", "batch/v1")
		p.Annotations = map[string]string{wrap.AnnotationLease: "mine"}
		_, err := pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `ClusterLockPolicy batch selects this pod, does not allow it to skip the lock, and sets klock.io/lease to "cronjob-nightly"`) {
			t.Errorf("own lease: err = %v", err)
		}

		p = ownedPod("idle-sidecar", batch, scheduled, "Job", "batch/v1")
		p.Spec.Containers = append(p.Spec.Containers, container("idle", "sleep", "1d"))
		p.Annotations = map[string]string{wrap.AnnotationContainer: "idle"}
		_, err = pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `sets klock.io/container to "app"`) {
			t.Errorf("wrapping a sidecar: err = %v", err)
		}

		// The names klock uses, without klock: an init container called
		// klock-install and a sidecar that runs some /klock-bin/klock.
		p = ownedPod("look-alike", batch, scheduled, "Job", "batch/v1")
		p.Spec.InitContainers = []corev1.Container{container("klock-install", "true")}
		p.Spec.Containers = append(p.Spec.Containers, container("side", "/klock-bin/klock", "--lease=cronjob-nightly", "--", "sleep", "1d"))
		p.Annotations = map[string]string{wrap.AnnotationInjected: "side"}
		_, err = pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `spec.initContainers[0].name: Invalid value: "klock-install": this name is reserved for klock`) {
			t.Errorf("look-alike: err = %v", err)
		}
	})

	t.Run("a bare pod by its label, and its opt-out", func(t *testing.T) {
		p := pod("bare", nil, container("app", "work"))
		p.Labels = map[string]string{"tier": "bare", "app": "Report_Gen"}
		got, err := pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != selected+".report-gen" {
			t.Errorf("lease %q, want %s.report-gen", lease, selected)
		}
		p.Name, p.Annotations = "bare-skipped", map[string]string{wrap.AnnotationSkip: "true"}
		if got, err = pods(selected).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != "" {
			t.Errorf("an allowed opt-out was wrapped with %q", lease)
		}
		p.Name, p.Annotations, p.Labels["app"] = "bare-unnamed", nil, ""
		_, err = pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `ClusterLockPolicy bare-pods selects this pod, but its lease "{namespace}.{label:app}" cannot be named for it`) {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("the webhook's own annotation does not pass for wrapped", func(t *testing.T) {
		p := ownedPod("fake-wrapped", batch, scheduled, "Job", "batch/v1")
		p.Annotations = map[string]string{wrap.AnnotationInjected: "app"}
		got, err := pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.Containers[0].Command[0] != "/klock-bin/klock" {
			t.Errorf("admitted unwrapped: %q", got.Spec.Containers[0].Command)
		}
	})

	t.Run("an opt-out the policy does not allow is denied", func(t *testing.T) {
		p := ownedPod("skipper", batch, scheduled, "Job", "batch/v1")
		p.Annotations = map[string]string{wrap.AnnotationSkip: "true"}
		_, err := pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "ClusterLockPolicy batch selects this pod and does not allow it to skip the lock") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("a counting lock's pods run with its count, which they may not change", func(t *testing.T) {
		counted := map[string]string{"tier": "counted"}
		createPolicy(t, c, policy("counted", klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
			Selector:          &metav1.LabelSelector{MatchLabels: counted},
			Lease:             "pool-{name}",
			MaxHolders:        3,
			Order:             "any",
		}))
		got, err := pods(selected).Create(ctx, ownedPod("counted", counted, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cmd := got.Spec.Containers[0].Command
		if wrappedLease(t, got) != "pool-nightly" || !slices.Contains(cmd, "--max-holders=3") || !slices.Contains(cmd, "--order=any") {
			t.Errorf("lease %q, command %q", got.Annotations[wrap.AnnotationLease], cmd)
		}
		p := ownedPod("counted-more", counted, scheduled, "Job", "batch/v1")
		p.Annotations = map[string]string{wrap.AnnotationMaxHolders: "10"}
		_, err = pods(selected).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `ClusterLockPolicy counted selects this pod, does not allow it to skip the lock, and sets klock.io/max-holders to "3"`) {
			t.Errorf("a pod raising the count: err = %v", err)
		}
	})

	t.Run("the status counts the workloads the policy selects", func(t *testing.T) {
		framework.Eventually(t, 30*time.Second, "batch selects 1 workload (the CronJob), bare-pods 0", func() bool {
			var b, p klockv1alpha1.ClusterLockPolicy
			return c.Get(ctx, client.ObjectKey{Name: "batch"}, &b) == nil && c.Get(ctx, client.ObjectKey{Name: "bare-pods"}, &p) == nil &&
				b.Status.Workloads == 1 && p.Status.Workloads == 0
		})
	})

	t.Run("two policies of one priority: denied, naming both; a higher priority wins with a warning", func(t *testing.T) {
		rival := policy("batch-rival", klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
			Selector:          &metav1.LabelSelector{MatchLabels: batch},
			Lease:             "rival-{name}",
		})
		createPolicy(t, c, rival)
		_, err := pods(selected).Create(ctx, ownedPod("tied", batch, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "ClusterLockPolicies batch, batch-rival all select this pod with priority 0") {
			t.Fatalf("err = %v", err)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(rival), rival); err != nil {
			t.Fatal(err)
		}
		rival.Spec.Priority = 10
		if err := c.Update(ctx, rival); err != nil {
			t.Fatal(err)
		}
		waitReady(t, c, rival.Name)
		client := newWarningClient(t)
		got, err := client.CoreV1().Pods(selected).Create(ctx, ownedPod("ranked", batch, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease := wrappedLease(t, got); lease != "rival-nightly" {
			t.Errorf("lease %q, want rival-nightly", lease)
		}
		if w := client.take(); !slices.ContainsFunc(w, func(s string) bool {
			return strings.Contains(s, "ClusterLockPolicy batch (priority 0) also selects this pod, and gives way to batch-rival (priority 10)")
		}) {
			t.Errorf("warnings %q", w)
		}
		if err := c.Delete(ctx, rival); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a policy the schema lets through but klock cannot apply is not Ready, and the others are", func(t *testing.T) {
		bad := policy("bad-selector", klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
			Selector:          &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Foo"}}},
			Labels:            map[string]string{"app.kubernetes.io/managed-by": "me"},
		})
		if err := c.Create(ctx, bad); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, bad) })
		framework.Eventually(t, 30*time.Second, "bad-selector Ready=False, Invalid", func() bool {
			if c.Get(ctx, client.ObjectKeyFromObject(bad), bad) != nil {
				return false
			}
			cond := meta.FindStatusCondition(bad.Status.Conditions, klockv1alpha1.ConditionReady)
			return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "Invalid" &&
				strings.Contains(cond.Message, "spec.selector.matchExpressions[0].operator") && strings.Contains(cond.Message, "reserved for klock")
		})
		waitReady(t, c, "batch")
		mwc, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "klock", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(mwc.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool {
			return w.Name == "bad-selector.policies.klock.io"
		}) {
			t.Error("an invalid policy got an entry")
		}
	})

	t.Run("the webhook configuration follows the policies", func(t *testing.T) {
		entry := func() *admissionregistrationv1.MutatingWebhook {
			mwc, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "klock", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range mwc.Webhooks {
				if mwc.Webhooks[i].Name == "batch.policies.klock.io" {
					return &mwc.Webhooks[i]
				}
			}
			return nil
		}
		framework.Eventually(t, 30*time.Second, "no entry for the deleted batch-rival", func() bool {
			mwc, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "klock", metav1.GetOptions{})
			return err == nil && !slices.ContainsFunc(mwc.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return w.Name == "batch-rival.policies.klock.io" })
		})
		e := entry()
		if e == nil {
			t.Fatal("no entry batch.policies.klock.io")
		}
		want := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"batch"}}}}
		if diff := cmp.Diff(want, e.ObjectSelector); diff != "" || e.FailurePolicy == nil || *e.FailurePolicy != admissionregistrationv1.Fail {
			t.Errorf("object selector (-want +got):\n%s\nfailure policy %v", diff, e.FailurePolicy)
		}

		var p klockv1alpha1.ClusterLockPolicy
		if err := c.Get(ctx, client.ObjectKey{Name: "batch"}, &p); err != nil {
			t.Fatal(err)
		}
		p.Spec.Selector.MatchLabels = map[string]string{"tier": "nightly"}
		if err := c.Update(ctx, &p); err != nil {
			t.Fatal(err)
		}
		waitReady(t, c, "batch")
		if e := entry(); e == nil || e.ObjectSelector.MatchExpressions[0].Values[0] != "nightly" {
			t.Errorf("entry after the update: %+v", e)
		}
	})

	t.Run("while the webhook is down, only pods a policy selects are refused", func(t *testing.T) {
		webhookDown()
		if _, err := pods(selected).Create(ctx, ownedPod("plain-down", map[string]string{"tier": "web"}, scheduled, "Job", "batch/v1"), metav1.CreateOptions{}); err != nil {
			t.Errorf("a pod no policy selects was refused: %v", err)
		}
		_, err := pods(selected).Create(ctx, ownedPod("selected-down", map[string]string{"tier": "nightly"}, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "batch.policies.klock.io") {
			t.Errorf("a pod the policy selects was admitted without the webhook (err %v): it would run unlocked", err)
		}
		if err := c.Delete(ctx, policy("batch", klockv1alpha1.ClusterLockPolicySpec{})); err != nil {
			t.Fatal(err)
		}
		// No webhook to take the entry out: it stays, and fails closed.
		if _, err := pods(selected).Create(ctx, ownedPod("after-delete-down", map[string]string{"tier": "nightly"}, scheduled, "Job", "batch/v1"), metav1.CreateOptions{}); err == nil {
			t.Error("admitted while the entry is still there and the webhook down")
		}
	})

	t.Run("a deleted policy's entry goes once the webhook is back", func(t *testing.T) {
		startWebhook(t)
		framework.Eventually(t, 30*time.Second, "pods of the deleted policy admitted unwrapped", func() bool {
			got, err := pods(selected).Create(ctx, ownedPod("", map[string]string{"tier": "nightly"}, scheduled, "Job", "batch/v1"), metav1.CreateOptions{})
			return err == nil && wrappedLease(t, got) == ""
		})
		var names []string
		framework.Eventually(t, 30*time.Second, "the entry of the deleted policy removed, the others kept", func() bool {
			mwc, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "klock", metav1.GetOptions{})
			if err != nil {
				return false
			}
			names = names[:0]
			for _, w := range mwc.Webhooks {
				names = append(names, w.Name)
			}
			return !slices.Contains(names, "batch.policies.klock.io") && slices.Contains(names, "bare-pods.policies.klock.io") && slices.Contains(names, webhookpolicy.PodsWebhook)
		})
	})
}

// startWebhookUntil serves the webhook until the returned stop is called
// or the test ends.
func startWebhookUntil(t *testing.T, configure ...func(*server.Options)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done, err := cp.ServeWebhook(ctx, testKlockImage, configure...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return framework.StopWhenDone(t, cancel, done)
}

// editPolicy changes p on the API server, reading it again when the policy
// controller wrote its status in between.
func editPolicy(t *testing.T, c client.Client, p *klockv1alpha1.ClusterLockPolicy, edit func(*klockv1alpha1.ClusterLockPolicy)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(p), p); err != nil {
			return err
		}
		edit(p)
		return c.Update(context.Background(), p)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLeaseAccess(t *testing.T) {
	ctx := context.Background()
	c := policyClient(t)
	team := map[string]string{"klock-test/team": "lease-access"}
	ns := labelledNamespace(t, team)
	startWebhookUntil(t, func(o *server.Options) { o.LeaseAccess = leaseaccess.ModePolicy })
	p := policy("granting", klockv1alpha1.ClusterLockPolicySpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: team},
		WorkloadKinds:     []klockv1alpha1.WorkloadKind{klockv1alpha1.CronJob},
		GrantLeaseAccess:  true,
	})
	createPolicy(t, c, p)

	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "runner"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cronJob := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "report", Namespace: ns},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{ServiceAccountName: "runner", Containers: []corev1.Container{container("app", "work")}, RestartPolicy: corev1.RestartPolicyOnFailure},
		}}}},
	}
	cronJob, err := cp.Client.BatchV1().CronJobs(ns).Create(ctx, cronJob, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	may := func(verb, lease, resource string) bool {
		t.Helper()
		sar, err := cp.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:" + ns + ":runner",
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: "coordination.k8s.io", Resource: resource, Name: lease},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	framework.Eventually(t, 30*time.Second, "runner may update Lease cronjob-report", func() bool { return may("update", "cronjob-report", "leases") })

	t.Run("exactly the verbs klock uses, on its Lease", func(t *testing.T) {
		for _, verb := range []string{"get", "watch", "update", "create"} {
			if !may(verb, "cronjob-report", "leases") {
				t.Errorf("runner may not %s its Lease", verb)
			}
		}
		for _, verb := range []string{"delete", "patch", "list"} {
			if may(verb, "cronjob-report", "leases") {
				t.Errorf("runner may %s its Lease, which klock does not need without cleanup-lease", verb)
			}
		}
		for _, verb := range []string{"get", "update", "watch"} {
			if may(verb, "someone-elses", "leases") {
				t.Errorf("runner may %s another Lease", verb)
			}
		}
		if may("get", "", "leases/status") {
			t.Error("runner may read more than leases")
		}
	})

	t.Run("owned by the workload, labelled as klock's", func(t *testing.T) {
		role, err := cp.Client.RbacV1().Roles(ns).Get(ctx, "klock-lease-cronjob-report", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		refs := role.OwnerReferences
		if len(refs) != 1 || refs[0].UID != cronJob.UID || refs[0].Kind != "CronJob" || role.Labels["app.kubernetes.io/managed-by"] != "klock-webhook" {
			t.Errorf("owners %+v, labels %v", refs, role.Labels)
		}
		binding, err := cp.Client.RbacV1().RoleBindings(ns).Get(ctx, "klock-lease-cronjob-report", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "runner"}}; !cmp.Equal(binding.Subjects, want) {
			t.Errorf("subjects %+v", binding.Subjects)
		}
	})

	t.Run("every Lease of the lock: its queue, and the slots of its count", func(t *testing.T) {
		for _, verb := range []string{"get", "watch", "update"} {
			if !may(verb, "cronjob-report-queue", "leases") {
				t.Errorf("runner may not %s its lock's queue", verb)
			}
		}
		if may("update", "cronjob-report-1", "leases") {
			t.Error("runner may update a slot its mutex does not have")
		}
		editPolicy(t, c, p, func(p *klockv1alpha1.ClusterLockPolicy) { p.Spec.MaxHolders = 3 })
		framework.Eventually(t, 30*time.Second, "runner may update Lease cronjob-report-2", func() bool { return may("update", "cronjob-report-2", "leases") })
		for _, lease := range []string{"cronjob-report", "cronjob-report-1", "cronjob-report-queue"} {
			if !may("update", lease, "leases") {
				t.Errorf("runner may not update %s, a Lease of its lock", lease)
			}
		}
		if may("update", "cronjob-report-3", "leases") {
			t.Error("runner may update cronjob-report-3, beyond its lock's 3 slots")
		}
		// Back to a mutex, which cleanupLease below needs.
		editPolicy(t, c, p, func(p *klockv1alpha1.ClusterLockPolicy) { p.Spec.MaxHolders = 0 })
		framework.Eventually(t, 30*time.Second, "runner may no longer update Lease cronjob-report-2", func() bool { return !may("update", "cronjob-report-2", "leases") })
	})

	t.Run("cleanup-lease adds delete", func(t *testing.T) {
		editPolicy(t, c, p, func(p *klockv1alpha1.ClusterLockPolicy) { p.Spec.CleanupLease = true })
		framework.Eventually(t, 30*time.Second, "runner may delete its Lease", func() bool { return may("delete", "cronjob-report", "leases") })
	})

	t.Run("kept while a pod holds the Lease, removed when no longer granted", func(t *testing.T) {
		running := pod("report-running", map[string]string{wrap.AnnotationLease: "cronjob-report"}, container("app", "work"))
		running.Spec.ServiceAccountName = "runner"
		if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, running, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, p); err != nil {
			t.Fatal(err)
		}
		// Give the controller time to act on the deletion; the pod must
		// keep its Lease meanwhile.
		for range 10 {
			time.Sleep(200 * time.Millisecond)
			if !may("update", "cronjob-report", "leases") {
				t.Fatal("a running wrapped pod lost its Lease when the policy was deleted")
			}
		}
		// Annotations anyone may add to a pod after its creation, which
		// the webhook never sees, do not keep the Lease granted.
		forged, err := cp.Client.CoreV1().Pods(ns).Create(ctx, pod("report-forged", nil, container("app", "sleep", "1d")), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		forged.Annotations = map[string]string{wrap.AnnotationLease: "cronjob-report", wrap.AnnotationInjected: "app"}
		if _, err := cp.Client.CoreV1().Pods(ns).Update(ctx, forged, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The pod finishes (its object stays, as a Job's pods do): it
		// holds nothing any more.
		done, err := cp.Client.CoreV1().Pods(ns).Get(ctx, running.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		done.Status.Phase = corev1.PodSucceeded
		if _, err := cp.Client.CoreV1().Pods(ns).UpdateStatus(ctx, done, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Any change to the workload checks again (as does a timer).
		cronJob, err := cp.Client.BatchV1().CronJobs(ns).Get(ctx, "report", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		metav1.SetMetaDataLabel(&cronJob.ObjectMeta, "touched", "yes")
		if _, err := cp.Client.BatchV1().CronJobs(ns).Update(ctx, cronJob, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, 30*time.Second, "the Role and RoleBinding deleted", func() bool {
			_, rerr := cp.Client.RbacV1().Roles(ns).Get(ctx, "klock-lease-cronjob-report", metav1.GetOptions{})
			_, berr := cp.Client.RbacV1().RoleBindings(ns).Get(ctx, "klock-lease-cronjob-report", metav1.GetOptions{})
			return apierrors.IsNotFound(rerr) && apierrors.IsNotFound(berr)
		})
		if may("update", "cronjob-report", "leases") {
			t.Error("runner may still update its Lease")
		}
	})
}
