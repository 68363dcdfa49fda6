//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/test/e2e/cluster"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/wrap"
)

// The scenarios that need the webhook run in parallel; the one that
// scales it to zero runs after them. The gated scenarios' handoffs are
// reported once all have run.
func TestE2E(t *testing.T) {
	t.Run("with the webhook", func(t *testing.T) {
		// The CronJob scenarios first: they take minutes, mostly waiting,
		// and the others run beside them (see the parallelism in main).
		t.Run("CronJob runs wait for each other", testCronJobWaits)
		t.Run("gated CronJob runs wait at the scheduler", testCronJobGated)
		t.Run("CronJob skips a run while one is running", testCronJobSkips)
		t.Run("Deployment replicas take turns", testDeploymentHandover)
		t.Run("image ENTRYPOINT and CMD from a registry", testImageEntrypoint)
		t.Run("service account without Lease permissions", testLeasePermissions)
		t.Run("a ClusterLockPolicy wraps a Job and grants its Lease", testPolicyLeaseAccess)
		t.Run("SIGTERM reaches the command and the Lease is released", testSignals)
		t.Run("gated replicas of a counting lock", testGatedCountingLock)
		t.Run("gated pods take turns", testGatedTurns)
	})
	gatedHandoffs.report(t)
	t.Run("pods without klock annotations run while the webhook is down", testUntouchedWithoutWebhook)
}

// A job that outlasts the CronJob's one-minute interval, so that the
// controller starts the next job while the first still runs.
const cronJobSeconds = 70

// cronJob is a CronJob annotated with klock.io/ annotations, run every
// minute with overlapping jobs allowed; the webhook copies the annotations
// into its job template.
func cronJob(name string, annotations map[string]string) *batchv1.CronJob {
	script := fmt.Sprintf("echo START $HOSTNAME; sleep %d; echo END $HOSTNAME", cronJobSeconds)
	return &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: batchv1.CronJobSpec{
			Schedule:          "* * * * *",
			ConcurrencyPolicy: batchv1.AllowConcurrent,
			JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
				BackoffLimit: ptr.To(int32(0)),
				Template:     corev1.PodTemplateSpec{Spec: podSpec(busybox("job", script))},
			}},
		},
	}
}

// runCronJob creates the CronJob, waits for its first two jobs, suspends it
// and returns the jobs' pods in the order the jobs were scheduled, once
// both have finished.
func runCronJob(ctx context.Context, t *testing.T, ns string, cj *batchv1.CronJob) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for _, j := range startCronJob(ctx, t, ns, cj) {
		pods = append(pods, waitPod(ctx, t, ns, jobPod(ctx, t, ns, j), 3*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed)))
	}
	return pods
}

// startCronJob creates the CronJob, waits for its first two jobs, suspends
// it and returns those two jobs in the order they were scheduled. The
// second comes about a minute after the first, which then still runs.
func startCronJob(ctx context.Context, t *testing.T, ns string, cj *batchv1.CronJob) []batchv1.Job {
	t.Helper()
	created, err := cl.Client.BatchV1().CronJobs(ns).Create(ctx, cj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range cj.Annotations {
		if got := created.Spec.JobTemplate.Spec.Template.Annotations[k]; got != v {
			t.Fatalf("the webhook did not copy the CronJob's annotation %s into its job template: %v", k, created.Spec.JobTemplate.Spec.Template.Annotations)
		}
	}
	var jobs []batchv1.Job
	framework.Eventually(t, 3*time.Minute, "the CronJob controller to start two jobs", func() bool {
		list, err := cl.Client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
		jobs = nil
		if err == nil {
			for _, j := range list.Items {
				if metav1.IsControlledBy(&j, created) {
					jobs = append(jobs, j)
				}
			}
		}
		return len(jobs) >= 2
	})
	// No third run.
	patch := []byte(`{"spec":{"suspend":true}}`)
	if _, err := cl.Client.BatchV1().CronJobs(ns).Patch(ctx, cj.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].CreationTimestamp.Before(&jobs[j].CreationTimestamp) })
	return jobs[:2]
}

// jobPod waits for the job's pod and returns its name.
func jobPod(ctx context.Context, t *testing.T, ns string, j batchv1.Job) string {
	t.Helper()
	var podName string
	framework.Eventually(t, time.Minute, "job "+j.Name+"'s pod", func() bool {
		list, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + j.Name})
		if err == nil && len(list.Items) > 0 {
			podName = list.Items[0].Name
		}
		return podName != ""
	})
	return podName
}

// Scenario 1: runs of a CronJob with overlapping jobs take turns: the
// second job's pod waits while the first runs its command, and starts its
// own the moment the first releases the Lease.
//
// The jobs come from the real CronJob controller, on its one-minute
// schedule: it costs two to three minutes, spent in parallel with the
// other scenarios.
func testCronJobWaits(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "cronjob-wait")
	pods := runCronJob(ctx, t, ns, cronJob("nightly", map[string]string{wrap.AnnotationLease: "nightly"}))

	type run struct {
		pod        string
		started    time.Time // the container, that is klock, started
		start, end time.Time // the command's START and END lines
	}
	var runs []run
	for _, p := range pods {
		wrapped(t, p, "nightly")
		if p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("pod %s %s: %s", p.Name, p.Status.Phase, describe(p))
		}
		lines := podLogs(ctx, t, ns, p.Name)
		runs = append(runs, run{
			pod:     p.Name,
			started: p.Status.ContainerStatuses[0].State.Terminated.StartedAt.Time,
			start:   mustFind(t, p.Name, lines, "START"),
			end:     mustFind(t, p.Name, lines, "END"),
		})
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].start.Before(runs[j].start) })
	first, second := runs[0], runs[1]
	t.Logf("%s ran its command %s to %s; %s started at %s and ran its command %s to %s",
		first.pod, first.start.Format(time.StampMilli), first.end.Format(time.StampMilli),
		second.pod, second.started.Format(time.Stamp), second.start.Format(time.StampMilli), second.end.Format(time.StampMilli))
	// The second pod's container started while the first ran its command:
	// the jobs overlapped, and the second waited for the lock.
	if !second.started.Before(first.end) {
		t.Fatalf("the jobs did not overlap: %s started at %s, after %s's command ended at %s", second.pod, second.started, first.pod, first.end)
	}
	if second.start.Before(first.end) {
		t.Fatalf("two commands ran at once: %s started at %s, before %s ended at %s", second.pod, second.start, first.pod, first.end)
	}
	// The scenario's bound is a second. Allowed: one more, for two cores
	// shared by the whole cluster and the other scenarios.
	gap := second.start.Sub(first.end)
	t.Logf("handover: %s from END to START", gap)
	if gap > 2*time.Second {
		t.Errorf("%s started its command %s after %s finished, want within a second (the Lease is released on exit and watched by the waiter)", second.pod, gap, first.pod)
	}
	h, transitions, err := holder(ctx, ns, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if h != "" || transitions < 1 {
		t.Errorf("Lease nightly after both runs: holder %q, %d transitions; want released, at least 1 transition", h, transitions)
	}
}

// Scenario 2: with a short klock.io/wait and klock.io/conflict-exit-code
// "0", a run that overlaps one still running exits 0 without running its
// command.
func testCronJobSkips(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "cronjob-skip")
	pods := runCronJob(ctx, t, ns, cronJob("report", map[string]string{
		wrap.AnnotationLease:            "report",
		wrap.AnnotationWait:             "2s",
		wrap.AnnotationConflictExitCode: "0",
	}))
	ran, skipped := pods[0], pods[1]
	for _, p := range pods {
		wrapped(t, p, "report")
		if p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("pod %s %s, want Succeeded: %s", p.Name, p.Status.Phase, describe(p))
		}
	}
	if !slices.Contains(skipped.Spec.Containers[0].Command, "--conflict-exit-code=0") {
		t.Errorf("the skipping pod's command %q lacks --conflict-exit-code=0", skipped.Spec.Containers[0].Command)
	}
	ranLines := podLogs(ctx, t, ns, ran.Name)
	end := mustFind(t, ran.Name, ranLines, "END")
	mustFind(t, ran.Name, ranLines, "START")
	if l, ok := find(podLogs(ctx, t, ns, skipped.Name), "START"); ok {
		t.Fatalf("the overlapping run %s ran its command at %s", skipped.Name, l.at)
	}
	finished := skipped.Status.ContainerStatuses[0].State.Terminated.FinishedAt.Time
	if !finished.Before(end) {
		t.Fatalf("%s finished at %s, after %s's command ended at %s: it did not overlap", skipped.Name, finished, ran.Name, end)
	}
	t.Logf("%s exited 0 at %s without running its command, while %s ran until %s", skipped.Name, finished.Format(time.Stamp), ran.Name, end.Format(time.StampMilli))
}

// A command that runs until SIGTERM, and says so.
const untilTerm = `trap 'echo TERM $HOSTNAME; sleep 1; echo CLEANED $HOSTNAME; exit 0' TERM; echo START $HOSTNAME; while true; do sleep 1; done`

// deployment is a Deployment of replicas pods labelled app=name, run by
// the worker service account, whose one container runs until SIGTERM.
func deployment(name string, replicas int32, annotations map[string]string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: worker,
					Containers:         []corev1.Container{busybox("app", untilTerm)},
				},
			},
		},
	}
}

// Scenario 3: two replicas of a Deployment share one Lease: one runs its
// command, the other waits; deleting the one that runs hands the Lease to
// the other.
func testDeploymentHandover(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "deployment")
	const leaseSeconds = 20
	dep := deployment("singleton", 2, map[string]string{
		wrap.AnnotationLease:         "singleton",
		wrap.AnnotationLeaseDuration: fmt.Sprintf("%ds", leaseSeconds),
	})
	if _, err := cl.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := func() []corev1.Pod {
		list, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=singleton"})
		if err != nil {
			t.Fatal(err)
		}
		return list.Items
	}
	// Which pods have started their command.
	started := func(ps []corev1.Pod) (names []string) {
		for _, p := range ps {
			if p.DeletionTimestamp == nil && running(&p) {
				if _, ok := find(podLogs(ctx, t, ns, p.Name), "START"); ok {
					names = append(names, p.Name)
				}
			}
		}
		return names
	}
	var all []corev1.Pod
	framework.Eventually(t, 2*time.Minute, "both replicas to run, one of them its command", func() bool {
		all = pods()
		n := 0
		for _, p := range all {
			if running(&p) {
				n++
			}
		}
		return n == 2 && len(started(all)) == 1
	})
	for _, p := range all {
		wrapped(t, &p, "singleton")
	}
	// And it stays that way: the other waits.
	time.Sleep(3 * time.Second)
	runner := started(pods())
	if len(runner) != 1 {
		t.Fatalf("replicas running their command: %v, want exactly one", runner)
	}
	h, transitions, err := holder(ctx, ns, "singleton")
	if err != nil {
		t.Fatal(err)
	}
	if h != runner[0] {
		t.Fatalf("Lease singleton is held by %q, but %s runs the command", h, runner[0])
	}
	var waiter string
	for _, p := range all {
		if p.Name != runner[0] {
			waiter = p.Name
		}
	}

	// Record the Lease's holders from here on.
	w, err := cl.Client.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=singleton"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	runnerLog := follow(ctx, t, ns, runner[0])
	deleted := time.Now()
	if err := cl.Client.CoreV1().Pods(ns).Delete(ctx, runner[0], metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The other replica, or the one the ReplicaSet starts in place of the
	// deleted one if its klock is up by then: klock promises one holder at
	// a time, not an order among waiters.
	var (
		next  string
		start line
	)
	framework.Eventually(t, 2*leaseSeconds*time.Second, "another replica to take over", func() bool {
		for _, p := range pods() {
			if p.Name == runner[0] || !running(&p) {
				continue
			}
			if l, ok := find(podLogs(ctx, t, ns, p.Name), "START"); ok {
				next, start = p.Name, l
				return true
			}
		}
		return false
	})
	who := "the waiting replica"
	if next != waiter {
		who = "the replacement replica"
	}
	took := start.at.Sub(deleted)
	t.Logf("%s, %s, took over %s after %s was deleted", next, who, took.Round(time.Millisecond), runner[0])
	if took > leaseSeconds*time.Second {
		t.Errorf("%s took over %s after the holder was deleted, beyond the lease duration of %ds", next, took, leaseSeconds)
	}
	// Not before the deleted replica's command had finished.
	if end := mustFind(t, runner[0], runnerLog(), "CLEANED"); start.at.Before(end) {
		t.Errorf("%s started its command at %s, while %s's still ran (until %s)", next, start.at, runner[0], end)
	}
	var holders []string
	timeout := time.After(10 * time.Second)
	for len(holders) == 0 || holders[len(holders)-1] != next {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch of Lease singleton ended")
			}
			if l, ok := ev.Object.(*coordinationv1.Lease); ok {
				if h := ptr.Deref(l.Spec.HolderIdentity, ""); len(holders) == 0 || holders[len(holders)-1] != h {
					holders = append(holders, h)
				}
			}
		case <-timeout:
			t.Fatalf("the Lease's holders after the deletion: %q, never %s", holders, next)
		}
	}
	h, after, err := holder(ctx, ns, "singleton")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Lease singleton: holders %q after the deletion, transitions %d -> %d", holders, transitions, after)
	if h != next || after != transitions+1 {
		t.Errorf("Lease singleton after the handover: holder %q with %d transitions, want %s with %d", h, after, next, transitions+1)
	}
	// The third replica waits in turn.
	time.Sleep(2 * time.Second)
	if runner := started(pods()); len(runner) != 1 || runner[0] != next {
		t.Errorf("replicas running their command after the handover: %v, want only %s", runner, next)
	}
}

// Scenario 4: a pod that sets no command runs its image's ENTRYPOINT and
// CMD under klock: the webhook reads them from the image's registry, here
// go-containerregistry's, on the host, which pods reach at the bridge's
// address.
func testImageEntrypoint(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "entrypoint")

	var manifests atomic.Int32
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	// Only on the bridge's address: pods reach it, the outside does not.
	// It speaks plain HTTP, which the webhook allows because the chart
	// lists the bridge's address in webhook.insecureRegistries.
	ln, err := net.Listen("tcp", cluster.PodGateway+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			manifests.Add(1)
		}
		reg.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	ref := fmt.Sprintf("%s:%d/e2e/entrypoint:1", cluster.PodGateway, port)
	entrypoint := []string{"/bin/sh", "-c", `echo "ran: $0 $1 under lease $KLOCK_LEASE"`}
	cmd := []string{"from-cmd", "second-arg"}
	img, err := cluster.BusyboxImage(v1.Config{Entrypoint: entrypoint, Cmd: cmd})
	if err != nil {
		t.Fatal(err)
	}
	push, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(push, img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("pushing to the registry: %v", err)
	}
	// The kubelet runs the same image, imported under the same name.
	if err := cl.Import(ctx, ref, img); err != nil {
		t.Fatal(err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "entrypoint", Annotations: map[string]string{wrap.AnnotationLease: "entrypoint"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: worker, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "app", Image: ref, ImagePullPolicy: corev1.PullNever}},
		},
	}
	created, err := cl.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wrapped(t, created, "entrypoint")
	c := created.Spec.Containers[0]
	// The image's argv, with $ escaped as $$: the kubelet expands $(VAR)
	// in a pod's command, but a runtime never does in an image's.
	var want []string
	for _, arg := range append(append([]string{}, entrypoint...), cmd...) {
		want = append(want, strings.ReplaceAll(arg, "$", "$$"))
	}
	if i := slices.Index(c.Command, "--"); i < 0 || !slices.Equal(c.Command[i+1:], want) || len(c.Args) != 0 {
		t.Fatalf("wrapped command %q args %q, want klock ... -- %q", c.Command, c.Args, want)
	}
	if manifests.Load() == 0 {
		t.Fatal("the webhook resolved the image without asking the registry")
	}
	done := waitPod(ctx, t, ns, "entrypoint", 2*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
	if done.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s: %s", done.Status.Phase, describe(done))
	}
	mustFind(t, "entrypoint", podLogs(ctx, t, ns, "entrypoint"), "ran: from-cmd second-arg under lease entrypoint")
}

// Scenario 5: a wrapped pod whose service account may not use Leases gets
// a warning when created, and fails; once the chart's lease-holder
// ClusterRole is bound to the service account, the pod succeeds.
func testLeasePermissions(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "rbac")
	const sa = "unprivileged"
	createServiceAccount(ctx, t, ns, sa)
	client, warns := withWarnings(t)
	create := func(name string) *corev1.Pod {
		spec := podSpec(busybox("app", "echo START; echo END"))
		spec.ServiceAccountName = sa
		p, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{wrap.AnnotationLease: name}},
			Spec:       spec,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wrapped(t, p, name)
		return p
	}

	create("denied")
	got := warns.take()
	if !slices.ContainsFunc(got, func(w string) bool {
		return strings.Contains(w, "service account "+ns+"/"+sa+" may not") && strings.Contains(w, "leases")
	}) {
		t.Fatalf("admission warnings %q, want one that %s/%s may not use leases", got, ns, sa)
	}
	t.Logf("warning on create: %s", got[0])
	p := waitPod(ctx, t, ns, "denied", 2*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
	if p.Status.Phase != corev1.PodFailed || p.Status.ContainerStatuses[0].State.Terminated.ExitCode != 125 {
		t.Fatalf("pod denied %s, want Failed with klock's exit status 125: %s", p.Status.Phase, describe(p))
	}

	grantLeaseHolder(ctx, t, ns, sa)
	create("granted")
	if got := warns.take(); len(got) > 0 {
		t.Errorf("admission warnings %q once the role is bound, want none", got)
	}
	p = waitPod(ctx, t, ns, "granted", 2*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
	if p.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod granted %s, want Succeeded: %s", p.Status.Phase, describe(p))
	}
	mustFind(t, "granted", podLogs(ctx, t, ns, "granted"), "END")
}

// Scenario 5, continued, with a policy: a ClusterLockPolicy selects
// a Job that carries no klock annotation, under a service account that may
// not use Leases. The webhook wraps its pod, the Lease access controller
// grants the account that one Lease, and the Job completes on the node.
func testPolicyLeaseAccess(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "policy")
	const sa = "batch-runner"
	createServiceAccount(ctx, t, ns, sa)

	policies, err := client.New(cl.Config, client.Options{Scheme: webhook.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	policy := &klockv1alpha1.ClusterLockPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: ns},
		Spec: klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}},
			WorkloadKinds:     []klockv1alpha1.WorkloadKind{klockv1alpha1.Job},
			GrantLeaseAccess:  true,
			Wait:              "1m",
		},
	}
	if err := policies.Create(ctx, policy); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies.Delete(context.Background(), policy) })
	framework.Eventually(t, time.Minute, "the policy Ready", func() bool {
		return policies.Get(ctx, client.ObjectKeyFromObject(policy), policy) == nil &&
			meta.IsStatusConditionTrue(policy.Status.Conditions, klockv1alpha1.ConditionReady)
	})

	spec := podSpec(busybox("app", "echo START; echo END"))
	spec.ServiceAccountName = sa
	job, err := cl.Client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "report"},
		Spec:       batchv1.JobSpec{BackoffLimit: ptr.To(int32(3)), Template: corev1.PodTemplateSpec{Spec: spec}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 2*time.Minute, "the Job to complete", func() bool {
		j, err := cl.Client.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{})
		return err == nil && j.Status.Succeeded == 1
	})
	role, err := cl.Client.RbacV1().Roles(ns).Get(ctx, "klock-lease-job-report", metav1.GetOptions{})
	if err != nil || !slices.Equal(role.Rules[0].ResourceNames, []string{"job-report", "job-report-queue"}) {
		t.Fatalf("the Role for the Job's Lease: %v, %+v", err, role)
	}
	pods, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job.Name})
	if err != nil {
		t.Fatal(err)
	}
	var succeeded int
	for _, p := range pods.Items {
		wrapped(t, &p, "job-report")
		if p.Annotations[wrap.AnnotationPolicy] != policy.Name {
			t.Errorf("pod %s: klock.io/policy %q, want %q", p.Name, p.Annotations[wrap.AnnotationPolicy], policy.Name)
		}
		if p.Status.Phase == corev1.PodSucceeded {
			succeeded++
			mustFind(t, p.Name, podLogs(ctx, t, ns, p.Name), "END")
		}
	}
	// A pod started before the Role existed fails with 125 and the Job
	// retries; how many tries it took is timing, the success is not.
	t.Logf("%d pod(s), %d succeeded", len(pods.Items), succeeded)
	if succeeded != 1 {
		t.Errorf("%d pods succeeded, want 1", succeeded)
	}
}

// Scenario 6: deleting a wrapped pod that runs its command delivers SIGTERM
// to the command, whose trap runs; the pod ends within its grace period;
// and the pod waiting for the Lease acquires it at once, because klock
// released it rather than leaving it to expire.
func testSignals(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "signals")
	const (
		grace        = 30
		leaseSeconds = 60 // an expiry would make the waiter wait this long
	)
	newPod := func(name string) {
		spec := podSpec(busybox("app", untilTerm))
		spec.TerminationGracePeriodSeconds = ptr.To(int64(grace))
		_, err := cl.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
				wrap.AnnotationLease:         "signals",
				wrap.AnnotationLeaseDuration: fmt.Sprintf("%ds", leaseSeconds),
			}},
			Spec: spec,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	newPod("first")
	waitPod(ctx, t, ns, "first", 2*time.Minute, "running", running)
	framework.Eventually(t, time.Minute, "first to run its command", func() bool {
		_, ok := find(podLogs(ctx, t, ns, "first"), "START")
		return ok
	})
	newPod("second")
	waitPod(ctx, t, ns, "second", 2*time.Minute, "running", running)
	time.Sleep(2 * time.Second)
	if _, ok := find(podLogs(ctx, t, ns, "second"), "START"); ok {
		t.Fatal("second ran its command while first held the Lease")
	}

	// Follow first's log, which ends with the pod, and watch it go.
	firstLog := follow(ctx, t, ns, "first")
	w, err := cl.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=first"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	deleted := time.Now()
	if err := cl.Client.CoreV1().Pods(ns).Delete(ctx, "first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	lines := firstLog()
	term := mustFind(t, "first", lines, "TERM")
	cleaned := mustFind(t, "first", lines, "CLEANED")

	var last *corev1.Pod
	for gone := false; !gone; {
		select {
		case ev := <-w.ResultChan():
			if p, ok := ev.Object.(*corev1.Pod); ok {
				last = p
			}
			gone = ev.Type == watch.Deleted
		case <-time.After(2 * grace * time.Second):
			t.Fatalf("first still exists %ds after its deletion", 2*grace)
		}
	}
	ended := time.Since(deleted)
	t.Logf("first: SIGTERM trap at +%s, cleaned up at +%s, pod gone at +%s (grace period %ds)",
		term.Sub(deleted).Round(time.Millisecond), cleaned.Sub(deleted).Round(time.Millisecond), ended.Round(time.Millisecond), grace)
	if ended >= grace*time.Second {
		t.Errorf("first ended %s after its deletion, not within its grace period of %ds", ended, grace)
	}
	if st := last.Status.ContainerStatuses[0].State.Terminated; st == nil || st.ExitCode != 0 {
		t.Errorf("first's container ended as %s, want exit 0 from its trap (not killed)", describe(last))
	}
	// The kubelet's own account: it stopped the container gracefully.
	framework.Eventually(t, 30*time.Second, "the kubelet's Killing event for first", func() bool {
		evs, err := cl.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=first,reason=Killing"})
		return err == nil && len(evs.Items) > 0 && strings.Contains(evs.Items[0].Message, "Stopping container app")
	})

	var start time.Time
	framework.Eventually(t, time.Minute, "second to run its command", func() bool {
		l, ok := find(podLogs(ctx, t, ns, "second"), "START")
		start = l.at
		return ok
	})
	gap := start.Sub(cleaned)
	t.Logf("second started its command %s after first's command exited", gap.Round(time.Millisecond))
	// Released, not expired: an expired Lease would have kept second
	// waiting for most of the %ds lease duration.
	if gap > 3*time.Second {
		t.Errorf("second acquired %s after first's command exited; the Lease was not released (its duration is %ds)", gap, leaseSeconds)
	}
	if h, _, err := holder(ctx, ns, "signals"); err != nil || h != "second" {
		t.Errorf("Lease signals held by %q (%v), want second", h, err)
	}
}

// Scenario 7: with the webhook scaled to zero, a pod without klock
// annotations is created untouched and runs (the webhook configuration's
// matchConditions never send it there), while an annotated pod is refused
// rather than run without its lock.
func testUntouchedWithoutWebhook(t *testing.T) {
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "untouched")
	scale := []byte(`{"spec":{"replicas":0}}`)
	if _, err := cl.Client.AppsV1().Deployments(releaseNamespace).Patch(ctx, webhookName, types.MergePatchType, scale, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 2*time.Minute, "the webhook's pods to be gone", func() bool {
		list, err := cl.Client.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=klock-webhook"})
		return err == nil && len(list.Items) == 0
	})

	annotated := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "annotated", Annotations: map[string]string{wrap.AnnotationLease: "annotated"}},
		Spec:       podSpec(busybox("app", "echo START")),
	}
	if _, err := cl.Client.CoreV1().Pods(ns).Create(ctx, annotated, metav1.CreateOptions{}); err == nil {
		t.Fatal("an annotated pod was admitted with the webhook scaled to zero")
	} else {
		t.Logf("annotated pod refused, as failurePolicy Fail says: %v", err)
	}

	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "plain"}, Spec: podSpec(busybox("app", "echo plain ran"))}
	created, err := cl.Client.CoreV1().Pods(ns).Create(ctx, plain, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a pod without klock annotations was refused with the webhook down: %v", err)
	}
	c := created.Spec.Containers[0]
	if len(created.Spec.InitContainers) > 0 || !slices.Equal(c.Command, plain.Spec.Containers[0].Command) || len(created.Annotations) > 0 {
		t.Fatalf("the plain pod was changed: init containers %v, command %q, annotations %v", created.Spec.InitContainers, c.Command, created.Annotations)
	}
	for _, v := range created.Spec.Volumes {
		if v.Name == wrap.VolumeName {
			t.Fatalf("the plain pod got volume %s", v.Name)
		}
	}
	done := waitPod(ctx, t, ns, "plain", 2*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
	if done.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("plain pod %s: %s", done.Status.Phase, describe(done))
	}
	mustFind(t, "plain", podLogs(ctx, t, ns, "plain"), "plain ran")
}
