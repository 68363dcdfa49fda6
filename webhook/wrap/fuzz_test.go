package wrap_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/klock-io/klock/internal/cli"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/wrap"
)

// FuzzMutate: whatever the annotations and argv, wrap.Mutate does not panic,
// and what it admits is wrapped exactly once, runs the original argv
// verbatim, hands klock flags that klock accepts, and is gated at most
// once, with the label that tells the gate controller so.
// `go test -fuzz FuzzMutate ./webhook/wrap` explores; `go test` runs the seeds.
func FuzzMutate(f *testing.F) {
	f.Add("nightly", "30s", "0", "TERM", "5", "team=a", "true", "sh\x00-c\x00echo $(X)", "a\x00b", false, "true", uint8(1), false)
	f.Add("Bad_Name", "soon", "300", "NOPE", "-1", "novalue", "maybe", "", "", true, "maybe", uint8(0), true)
	f.Add("x", "", "", "", "", "", "", "", "args\x00only", true, "", uint8(2), true)
	f.Add("a.b-c", "1.5", "255", "9", "NaN", "k=v,k2=", "false", "--\x00-x", "", false, "false", uint8(2), false)
	gatings := []wrap.Gating{wrap.GatingOff, wrap.GatingOptIn, wrap.GatingDefault}
	f.Fuzz(func(t *testing.T, lease, wait, exitCode, signal, killAfter, labels, cleanup, command, args string, withImage bool, gate string, gating uint8, gated bool) {
		pod := builders.MakePod("p", "ns").Lease(lease).Obj()
		for k, v := range map[string]string{wrap.AnnotationWait: wait, wrap.AnnotationConflictExitCode: exitCode, wrap.AnnotationSignal: signal,
			wrap.AnnotationKillAfter: killAfter, wrap.AnnotationLabels: labels, wrap.AnnotationCleanupLease: cleanup, wrap.AnnotationGate: gate} {
			if v != "" {
				pod.Annotations[k] = v
			}
		}
		if gated {
			pod.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: wrap.SchedulingGate}}
		}
		opts := testOptions
		opts.Gating = gatings[int(gating)%len(gatings)]
		c := corev1.Container{Name: "app", Image: "img"}
		if command != "" {
			c.Command = strings.Split(command, "\x00")
		}
		if args != "" {
			c.Args = strings.Split(args, "\x00")
		}
		pod.Spec.Containers = []corev1.Container{c}
		var image *wrap.ImageCommand
		if withImage {
			image = &wrap.ImageCommand{Entrypoint: []string{"/entry"}, Cmd: []string{"$(cmd)"}}
		}

		before := pod.DeepCopy()
		if _, err := wrap.Mutate(pod, opts, image); err != nil {
			if !slices.EqualFunc(before.Spec.Containers, pod.Spec.Containers, func(a, b corev1.Container) bool { return a.Name == b.Name && slices.Equal(a.Command, b.Command) }) {
				t.Fatal("a denied pod was changed")
			}
			return
		}
		if !wrap.Wrapped(pod, opts) || len(pod.Spec.InitContainers) != 1 || len(pod.Spec.Volumes) != 1 {
			t.Fatalf("admitted but not wrapped once: %+v", pod.Spec)
		}
		got := pod.Spec.Containers[0].Command
		sep := slices.Index(got, "--")
		if sep < 0 {
			t.Fatalf("no -- in %q", got)
		}
		if err := cli.CheckArgs(got[1:sep]); err != nil {
			t.Fatalf("klock would reject the flags %q: %v", got[1:sep], err)
		}
		if len(c.Command) > 0 {
			if want := append(slices.Clone(c.Command), c.Args...); !slices.Equal(got[sep+1:], want) {
				t.Fatalf("argv %q, want %q", got[sep+1:], want)
			}
		}
		if len(pod.Spec.Containers[0].Args) != 0 {
			t.Fatalf("args left: %q", pod.Spec.Containers[0].Args)
		}
		gates := slices.DeleteFunc(slices.Clone(pod.Spec.SchedulingGates), func(g corev1.PodSchedulingGate) bool { return g.Name != wrap.SchedulingGate })
		if len(gates) > 1 || wrap.Gated(pod) != (pod.Labels[wrap.LabelGated] == "true") || (wrap.Gated(pod) && opts.Gating == wrap.GatingOff) {
			t.Fatalf("gating %s: gates %v, labels %v", opts.Gating, pod.Spec.SchedulingGates, pod.Labels)
		}
	})
}
