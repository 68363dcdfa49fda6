//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/wrap"
)

// worker is the service account the scenarios' workloads run as.
const worker = "worker"

// newNamespace creates a namespace for one scenario, with a service
// account worker that may hold Leases there.
func newNamespace(ctx context.Context, t *testing.T, prefix string) string {
	t.Helper()
	ns, err := cl.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createServiceAccount(ctx, t, ns.Name, worker)
	grantLeaseHolder(ctx, t, ns.Name, worker)
	return ns.Name
}

func createServiceAccount(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if _, err := cl.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// grantLeaseHolder lets service account sa hold Leases in ns: a
// RoleBinding to the chart's lease-holder ClusterRole, as the README tells
// users to do. When the RBAC controller grants it from a policy, this is
// where the scenarios switch to creating that policy instead. It returns
// once the API server's authorizer agrees.
func grantLeaseHolder(ctx context.Context, t *testing.T, ns, sa string) {
	t.Helper()
	_, err := cl.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: leaseHolderRole + "-" + sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: leaseHolderRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 30*time.Second, "the RoleBinding to take effect", func() bool {
		r, err := cl.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:" + ns + ":" + sa,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: "update", Group: "coordination.k8s.io", Resource: "leases"},
		}}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed
	})
}

// busybox is a container of the busybox image that runs script with sh.
func busybox(name, script string) corev1.Container {
	return corev1.Container{Name: name, Image: busyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sh", "-c", script}}
}

// podSpec runs c as worker, once.
func podSpec(c corev1.Container) corev1.PodSpec {
	return corev1.PodSpec{ServiceAccountName: worker, RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{c}}
}

// withWarnings is a client whose admission warnings are collected.
func withWarnings(t *testing.T) (kubernetes.Interface, *warnings) {
	t.Helper()
	w := &warnings{}
	cfg := rest.CopyConfig(cl.Config)
	cfg.WarningHandler = w
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, w
}

type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// waitPod polls pod ns/name until cond holds, and fails t with the pod's
// last state after timeout.
func waitPod(ctx context.Context, t *testing.T, ns, name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	var err error
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		pod, err = cl.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && cond(pod) {
			return pod
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("waiting %s for pod %s/%s to be %s: %v", timeout, ns, name, what, err)
	}
	t.Fatalf("waiting %s for pod %s/%s to be %s; it is %s: %s", timeout, ns, name, what, pod.Status.Phase, describe(pod))
	return nil
}

func phaseIs(phases ...corev1.PodPhase) func(*corev1.Pod) bool {
	return func(p *corev1.Pod) bool {
		for _, ph := range phases {
			if p.Status.Phase == ph {
				return true
			}
		}
		return false
	}
}

// running: the wrapped container runs (klock waits for the lease, or the
// command runs under it).
func running(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil {
			return true
		}
	}
	return false
}

// describe summarizes a pod's container states, for failure messages.
func describe(p *corev1.Pod) string {
	var b strings.Builder
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		fmt.Fprintf(&b, "%s: ", s.Name)
		switch {
		case s.State.Waiting != nil:
			fmt.Fprintf(&b, "waiting (%s: %s); ", s.State.Waiting.Reason, s.State.Waiting.Message)
		case s.State.Running != nil:
			fmt.Fprintf(&b, "running since %s; ", s.State.Running.StartedAt)
		case s.State.Terminated != nil:
			fmt.Fprintf(&b, "terminated (exit %d, %s: %s); ", s.State.Terminated.ExitCode, s.State.Terminated.Reason, s.State.Terminated.Message)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			fmt.Fprintf(&b, "%s: %s; ", c.Type, c.Message)
		}
	}
	return b.String()
}

// wrapped fails t unless the webhook wrapped the pod: the install init
// container, and klock with the lease as the container's command.
func wrapped(t *testing.T, p *corev1.Pod, lease string) {
	t.Helper()
	if p.Annotations[wrap.AnnotationInjected] == "" || len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != wrap.InitContainerName {
		t.Fatalf("pod %s was not wrapped: annotations %v, init containers %v", p.Name, p.Annotations, p.Spec.InitContainers)
	}
	cmd := p.Spec.Containers[0].Command
	if len(cmd) < 2 || cmd[0] != wrap.BinaryPath || cmd[1] != "--lease="+lease {
		t.Fatalf("pod %s's command is %q, want %s --lease=%s ...", p.Name, cmd, wrap.BinaryPath, lease)
	}
}

// line is one line of a container's log, with the time the runtime read it.
type line struct {
	at   time.Time
	text string
}

func (l line) String() string { return l.at.Format("15:04:05.000") + " " + l.text }

// podLogs is the log of the pod's (first) container, timestamped.
func podLogs(ctx context.Context, t *testing.T, ns, pod string) []line {
	t.Helper()
	raw, err := cl.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Timestamps: true}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of %s/%s: %v", ns, pod, err)
	}
	return parseLogs(t, string(raw))
}

// follow streams the log of the pod's container from now on; the function
// it returns waits until the log ends, with the container, and returns it
// whole.
func follow(ctx context.Context, t *testing.T, ns, pod string) func() []line {
	t.Helper()
	stream, err := cl.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Follow: true, Timestamps: true}).Stream(ctx)
	if err != nil {
		t.Fatalf("following the log of %s/%s: %v", ns, pod, err)
	}
	return func() []line {
		t.Helper()
		defer stream.Close()
		raw, err := io.ReadAll(stream)
		if err != nil {
			t.Fatalf("following the log of %s/%s: %v", ns, pod, err)
		}
		return parseLogs(t, string(raw))
	}
}

func parseLogs(t *testing.T, raw string) []line {
	t.Helper()
	var lines []line
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		ts, text, _ := strings.Cut(sc.Text(), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatalf("log line without a timestamp: %q", sc.Text())
		}
		lines = append(lines, line{at, text})
	}
	return lines
}

// find returns the first line that starts with prefix.
func find(lines []line, prefix string) (line, bool) {
	for _, l := range lines {
		if strings.HasPrefix(l.text, prefix) {
			return l, true
		}
	}
	return line{}, false
}

func mustFind(t *testing.T, pod string, lines []line, prefix string) time.Time {
	t.Helper()
	l, ok := find(lines, prefix)
	if !ok {
		t.Fatalf("pod %s never logged %q; its log: %q", pod, prefix, lines)
	}
	return l.at
}

// holder is the Lease's holder identity; "" when released or missing.
func holder(ctx context.Context, ns, lease string) (string, int32, error) {
	l, err := cl.Client.CoordinationV1().Leases(ns).Get(ctx, lease, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	var h string
	var transitions int32
	if l.Spec.HolderIdentity != nil {
		h = *l.Spec.HolderIdentity
	}
	if l.Spec.LeaseTransitions != nil {
		transitions = *l.Spec.LeaseTransitions
	}
	return h, transitions, nil
}

// timed logs how long the scenario took when it ends.
func timed(t *testing.T) {
	start := time.Now()
	t.Cleanup(func() { t.Logf("TIMING %s: %.1fs", t.Name(), time.Since(start).Seconds()) })
}
