package integration

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/webhook/wrap"
)

const testKlockImage = "ghcr.io/klock-io/klock:test"

// startWebhook serves the webhook until the test ends.
func startWebhook(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done, err := cp.ServeWebhook(ctx, testKlockImage)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook server: %v", err)
		}
	})
}

// warningClient is a clientset that records the API server's warnings.
type warningClient struct {
	kubernetes.Interface
	mu       sync.Mutex
	warnings []string
}

func newWarningClient(t *testing.T) *warningClient {
	t.Helper()
	w := &warningClient{}
	c := rest.CopyConfig(cp.Config)
	c.WarningHandlerWithContext = w
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	w.Interface = cs
	return w
}

func (w *warningClient) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.warnings = append(w.warnings, text)
}

func (w *warningClient) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.warnings
	w.warnings = nil
	return out
}

func pod(name string, annotations map[string]string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: containers},
	}
}

func container(name string, command ...string) corev1.Container {
	return corev1.Container{Name: name, Image: "busybox:1", Command: command}
}

func TestWebhook(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	pods := cp.Client.CoreV1().Pods(ns)
	lease := map[string]string{wrap.AnnotationLease: "nightly"}

	t.Run("while the webhook is down, only annotated pods are refused", func(t *testing.T) {
		if _, err := pods.Create(ctx, pod("plain-while-down", nil, container("app", "true")), metav1.CreateOptions{}); err != nil {
			t.Errorf("a pod without klock annotations was refused: %v", err)
		}
		_, err := pods.Create(ctx, pod("annotated-while-down", lease, container("app", "true")), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "pods.klock.io") {
			t.Errorf("an annotated pod was admitted without the webhook (err %v): it would run unlocked", err)
		}
	})

	startWebhook(t)
	client := newWarningClient(t)
	grantLeases(t, ns, "default")

	t.Run("an annotated pod is stored wrapped", func(t *testing.T) {
		in := pod("wrapped", map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationWait: "10s"},
			corev1.Container{Name: "app", Image: "busybox:1", Command: []string{"sh", "-c"}, Args: []string{"echo hi"}})
		got, err := client.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := got.Spec.Containers[0]
		want := []string{"/klock-bin/klock", "--lease=nightly", "--wait=10s", "--", "sh", "-c", "echo hi"}
		if diff := cmp.Diff(want, c.Command); diff != "" || len(c.Args) != 0 {
			t.Errorf("command (-want,+got):\n%s\nargs %v", diff, c.Args)
		}
		if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != "klock-install" || got.Spec.InitContainers[0].Image != testKlockImage {
			t.Errorf("init containers: %+v", got.Spec.InitContainers)
		}
		if got.Annotations[wrap.AnnotationInjected] != "app" {
			t.Errorf("annotations: %v", got.Annotations)
		}
		if w := client.take(); len(w) != 0 {
			t.Errorf("unexpected warnings: %v", w)
		}
	})

	t.Run("a pod without the annotation is untouched", func(t *testing.T) {
		got, err := pods.Create(ctx, pod("plain", map[string]string{"other.io/x": "y"}, container("app", "true")), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.InitContainers) != 0 || got.Spec.Containers[0].Command[0] != "true" {
			t.Errorf("changed: %+v", got.Spec)
		}
	})

	t.Run("warnings reach the user", func(t *testing.T) {
		c := container("app", "work")
		c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod("probed", lease, c), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if w := client.take(); len(w) != 1 || !strings.Contains(w[0], "livenessProbe") {
			t.Errorf("warnings %v, want one about the livenessProbe", w)
		}
	})

	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{name: "a bad annotation is denied with what to fix",
			pod:  pod("bad-wait", map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationWait: "soon"}, container("app", "true")),
			want: []string{`admission webhook "pods.klock.io" denied the request`, `metadata.annotations[klock.io/wait]: Invalid value: "soon"`}},
		{name: "an invalid lease name is denied",
			pod:  pod("bad-lease", map[string]string{wrap.AnnotationLease: "Not_Valid"}, container("app", "true")),
			want: []string{`metadata.annotations[klock.io/lease]: Invalid value: "Not_Valid"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pods.Create(ctx, tc.pod, metav1.CreateOptions{})
			if err == nil {
				t.Fatal("admitted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}

	t.Run("a service account without Lease permissions gets a warning with the fix", func(t *testing.T) {
		p := pod("no-rbac", lease, container("app", "work"))
		p.Spec.ServiceAccountName = "no-leases"
		if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		w := client.take()
		want := "service account " + ns + "/no-leases may not get, create, update, watch leases in namespace " + ns
		if len(w) != 1 || !strings.Contains(w[0], want) || !strings.Contains(w[0], "kubectl -n "+ns+" create role klock-lease-holder --verb=get,create,update,watch --resource=leases.coordination.k8s.io") {
			t.Errorf("warnings %q, want one saying %q and how to grant it", w, want)
		}
	})

	t.Run("a counting lock: its flags, and a warning naming the Leases of its lock the account lacks", func(t *testing.T) {
		counting := map[string]string{wrap.AnnotationLease: "pool", wrap.AnnotationMaxHolders: "3", wrap.AnnotationOrder: "any"}
		got, err := client.CoreV1().Pods(ns).Create(ctx, pod("counting", counting, container("app", "work")), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"/klock-bin/klock", "--lease=pool", "--max-holders=3", "--order=any", "--", "work"}
		if diff := cmp.Diff(want, got.Spec.Containers[0].Command); diff != "" {
			t.Errorf("command (-want,+got):\n%s", diff)
		}
		if w := client.take(); len(w) != 0 {
			t.Errorf("unexpected warnings: %v", w)
		}

		// An account granted the lease alone, by name, as a mutex whose
		// waiters race needs.
		rbac := cp.Client.RbacV1().Roles(ns)
		if _, err := rbac.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pool-only"}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"pool"}, Verbs: []string{"get", "update", "watch"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "pool-only"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pool-only"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "pool-only", Namespace: ns}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		mutex := pod("pool-mutex", map[string]string{wrap.AnnotationLease: "pool", wrap.AnnotationOrder: "any"}, container("app", "work"))
		mutex.Spec.ServiceAccountName = "pool-only"
		if _, err := client.CoreV1().Pods(ns).Create(ctx, mutex, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if w := client.take(); len(w) != 0 {
			t.Errorf("a mutex whose account may use its one Lease by name: warnings %q, want none", w)
		}
		p := pod("pool-counting", counting, container("app", "work"))
		p.Spec.ServiceAccountName = "pool-only"
		if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		w := client.take()
		lacks := "service account " + ns + "/pool-only may not get, update, watch leases in namespace " + ns + " (on the Leases pool-1, pool-2 of its lock)"
		if len(w) != 1 || !strings.Contains(w[0], lacks) || !strings.Contains(w[0], "kubectl -n "+ns+" create role klock-lease-holder --verb=get,create,update,watch --resource=leases.coordination.k8s.io") {
			t.Errorf("warnings %q, want one saying %q and how to grant it", w, lacks)
		}

		_, err = pods.Create(ctx, pod("bad-count", map[string]string{wrap.AnnotationLease: "pool", wrap.AnnotationMaxHolders: "0"}, container("app", "true")), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `metadata.annotations[klock.io/max-holders]: Invalid value: "0"`) {
			t.Errorf("max-holders 0: err = %v", err)
		}
		_, err = pods.Create(ctx, pod("counting-cleanup", map[string]string{wrap.AnnotationLease: "pool", wrap.AnnotationMaxHolders: "2", wrap.AnnotationCleanupLease: "true"}, container("app", "true")), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "cleanup (delete on release) works only with max holders 1") {
			t.Errorf("a counting lock with cleanup: err = %v", err)
		}
	})

	t.Run("workloads pass their annotations to their pod templates", func(t *testing.T) {
		meta := func(name string) metav1.ObjectMeta {
			return metav1.ObjectMeta{Name: name, Annotations: map[string]string{wrap.AnnotationLease: "batch-" + name, "other.io/x": "y"}}
		}
		labels := map[string]string{"app": "w"}
		template := corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{container("app", "work")}, RestartPolicy: corev1.RestartPolicyOnFailure},
		}
		always := *template.DeepCopy()
		always.Spec.RestartPolicy = corev1.RestartPolicyAlways
		selector := &metav1.LabelSelector{MatchLabels: labels}

		check := func(kind string, got *corev1.PodTemplateSpec, name string) {
			t.Helper()
			if got.Annotations[wrap.AnnotationLease] != "batch-"+name || got.Annotations["other.io/x"] != "" {
				t.Errorf("%s: template annotations %v, want only klock.io/lease=batch-%s", kind, got.Annotations, name)
			}
		}
		cj, err := cp.Client.BatchV1().CronJobs(ns).Create(ctx, &batchv1.CronJob{ObjectMeta: meta("cj"), Spec: batchv1.CronJobSpec{
			Schedule: "*/5 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("CronJob", &cj.Spec.JobTemplate.Spec.Template, "cj")
		job, err := cp.Client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{ObjectMeta: meta("job"), Spec: batchv1.JobSpec{Template: template}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("Job", &job.Spec.Template, "job")
		dep, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: meta("dep"), Spec: appsv1.DeploymentSpec{Selector: selector, Template: always}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("Deployment", &dep.Spec.Template, "dep")
		sts, err := cp.Client.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: meta("sts"), Spec: appsv1.StatefulSetSpec{Selector: selector, Template: always}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("StatefulSet", &sts.Spec.Template, "sts")
		ds, err := cp.Client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: meta("ds"), Spec: appsv1.DaemonSetSpec{Selector: selector, Template: always}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("DaemonSet", &ds.Spec.Template, "ds")
		rs, err := cp.Client.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{ObjectMeta: meta("rs"), Spec: appsv1.ReplicaSetSpec{Selector: selector, Template: always}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("ReplicaSet", &rs.Spec.Template, "rs")

		// kubectl annotate on an existing workload.
		plain, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "later"}, Spec: appsv1.DeploymentSpec{Selector: selector, Template: always}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		plain.Annotations = map[string]string{wrap.AnnotationLease: "batch-later"}
		updated, err := cp.Client.AppsV1().Deployments(ns).Update(ctx, plain, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check("Deployment, annotated later", &updated.Spec.Template, "later")

		// A rollout that would stall on the lock gets a warning.
		probed := *always.DeepCopy()
		probed.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		client.take()
		if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: meta("stalls"), Spec: appsv1.DeploymentSpec{Selector: selector, Template: probed}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if w := client.take(); len(w) != 1 || !strings.Contains(w[0], "the rollout stalls") {
			t.Errorf("warnings %q, want one about the stalled rollout", w)
		}

		// A mistake is denied on the workload, not on every pod it makes.
		bad := &batchv1.CronJob{
			ObjectMeta: metav1.ObjectMeta{Name: "bad", Annotations: map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationWait: "soon"}},
			Spec:       batchv1.CronJobSpec{Schedule: "*/5 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template}}},
		}
		_, err = cp.Client.BatchV1().CronJobs(ns).Create(ctx, bad, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `metadata.annotations[klock.io/wait]: Invalid value: "soon"`) || !strings.Contains(err.Error(), "CronJob bad") {
			t.Errorf("a CronJob with a bad annotation: %v", err)
		}
	})
}

// grantLeases lets service account sa use Leases in ns.
func grantLeases(t *testing.T, ns, sa string) {
	t.Helper()
	if err := cp.GrantLeases(context.Background(), ns, sa); err != nil {
		t.Fatal(err)
	}
}
