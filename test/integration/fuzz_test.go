package integration

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/webhook/wrap"
)

// Pods made at random from good and bad values: each is either denied by
// klock's webhook with a message, or admitted and then accepted by the API
// server's own validation of the wrapped pod (a server-side dry-run create
// runs both). Anything else, such as a wrapped pod the API server finds
// invalid, fails the test.
func TestWebhookRandomPodsAreDeniedOrValid(t *testing.T) {
	ns := namespace(t)
	startWebhook(t)
	rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: a failure can be replayed
	pick := func(values ...string) string { return values[rng.IntN(len(values))] }
	// Per annotation: values klock accepts, then values it must deny. A bad
	// value is picked one time in ten, so that both outcomes are common.
	annotations := map[string][2][]string{
		wrap.AnnotationLease:            {{"nightly", "a.b-c"}, {"Bad_Name", "", strings.Repeat("x", 254)}},
		wrap.AnnotationWait:             {{"", "30s", "1.5", "0"}, {"soon", "-1"}},
		wrap.AnnotationConflictExitCode: {{"", "0", "255"}, {"256", "x"}},
		wrap.AnnotationSignal:           {{"", "TERM", "sigint", "9"}, {"0", "NOPE"}},
		wrap.AnnotationKillAfter:        {{"", "5s"}, {"NaN"}},
		wrap.AnnotationLeaseDuration:    {{"", "20s"}, {"1500ms", "5s"}},
		wrap.AnnotationRenewDeadline:    {{"", "8s"}, {"30s"}},
		wrap.AnnotationLabels:           {{"", "team=a"}, {"app.kubernetes.io/managed-by=x", "bad key=v", "novalue"}},
		wrap.AnnotationCleanupLease:     {{"", "true", "false"}, {"yes"}},
		wrap.AnnotationContainer:        {{"", "app"}, {"missing"}},
	}
	var admitted, denied int
	for i := range 150 {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "fuzz-", Annotations: map[string]string{}}}
		for key, values := range annotations {
			v := pick(values[0]...)
			if rng.IntN(10) == 0 {
				v = pick(values[1]...)
			}
			if v != "" || key == wrap.AnnotationLease {
				p.Annotations[key] = v
			}
		}
		app := corev1.Container{Name: "app", Image: "busybox:1"}
		switch rng.IntN(5) {
		case 0:
			app.Command = []string{"sh", "-c", pick("echo $(HOME)", "exit 3", "--")}
		case 1, 2, 3:
			app.Command = []string{pick("/bin/true", "--", "-x")}
			app.Args = []string{pick("a b", "$(POD)", "")}
		default:
			// No command: the image would have to be read; busybox:1 is
			// out of reach here, so this must be a denial.
		}
		p.Spec.Containers = []corev1.Container{app}
		if rng.IntN(2) == 0 {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "busybox:1", Command: []string{"sleep", "1"}})
		}
		if rng.IntN(4) == 0 {
			p.Spec.InitContainers = []corev1.Container{{Name: pick("migrate", "migrate", "klock-install"), Image: "busybox:1", Command: []string{"true"}}}
		}
		_, err := cp.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err == nil:
			admitted++
		case strings.Contains(err.Error(), `admission webhook "pods.klock.io" denied the request: `):
			denied++
		default:
			t.Errorf("pod %d (%v, %+v): %v", i, p.Annotations, p.Spec.Containers, err)
		}
	}
	t.Logf("%d admitted and valid, %d denied by klock", admitted, denied)
	if admitted == 0 || denied == 0 {
		t.Errorf("%d admitted, %d denied: the generator should produce both", admitted, denied)
	}
}
