package wrap_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/wrap"
)

func gating(g wrap.Gating) wrap.Options {
	opts := testOptions
	opts.Gating = g
	return opts
}

// A wrapped pod is gated by the webhook's gating and its klock.io/gate, and
// its klock command is the same either way: the gate decides where the
// pod waits, not how klock holds the lock.
func TestMutateGates(t *testing.T) {
	job := func() *builders.PodBuilder { return builders.MakePod("p", "ns").Lease("nightly") }
	wrapped := func(b *builders.PodBuilder) *builders.PodBuilder {
		return b.Container("app", "busybox", "work").Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "work")
	}
	for _, tc := range []struct {
		name   string
		gating wrap.Gating
		// namespaces are --gating-namespaces; the pod's is ns.
		namespaces []string
		pod        *corev1.Pod
		want       *corev1.Pod
	}{
		{name: "opt-in: gated when asked", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true")).Gated().Obj()},
		{name: "opt-in: not gated unless asked", gating: wrap.GatingOptIn,
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Obj()},
		{name: "opt-in: not gated when asked not to be", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "false").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "false")).Obj()},
		{name: "no gating given is opt-in",
			pod:  job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true")).Gated().Obj()},
		{name: "default: gated without a word", gating: wrap.GatingDefault,
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Gated().Obj()},
		{name: "default: not gated when asked not to be", gating: wrap.GatingDefault,
			pod:  job().Annotation(wrap.AnnotationGate, "false").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "false")).Obj()},
		{name: "booleans as strconv reads them", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "1").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "1")).Gated().Obj()},
		{name: "off: not gated, and klock.io/gate false is fine", gating: wrap.GatingOff,
			pod:  job().Annotation(wrap.AnnotationGate, "false").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "false")).Obj()},
		{name: "the pod's own gates and labels stay, klock's gate goes after them", gating: wrap.GatingDefault,
			pod:  job().SchedulingGate("example.com/quota").Label("app", "web").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().SchedulingGate("example.com/quota").Label("app", "web")).Gated().Obj()},
		{name: "a start timeout is the controller's, not a klock flag", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "true").Annotation(wrap.AnnotationStartTimeout, "90s").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true").Annotation(wrap.AnnotationStartTimeout, "90s")).Gated().Obj()},
		{name: "a gated pod that carries klock's gate already gets it once", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "true").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true")).Gated().Obj()},
		{name: "a pod created wrapped, without its gate, is gated as any other", gating: wrap.GatingOptIn,
			pod:  wrapped(job().Annotation(wrap.AnnotationGate, "true")).Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true")).Gated().Obj()},
		{name: "opt-in: gated when asked in a gating namespace", gating: wrap.GatingOptIn, namespaces: []string{"team-a", "ns"},
			pod:  job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "true")).Gated().Obj()},
		{name: "default: gated without a word in a gating namespace", gating: wrap.GatingDefault, namespaces: []string{"ns"},
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Gated().Obj()},
		{name: "default: not gated outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Obj()},
		{name: "default: klock.io/gate false is fine outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod:  job().Annotation(wrap.AnnotationGate, "false").Container("app", "busybox", "work").Obj(),
			want: wrapped(job().Annotation(wrap.AnnotationGate, "false")).Obj()},
		{name: "opt-in: not gated unless asked, outside the gating namespaces", gating: wrap.GatingOptIn, namespaces: []string{"team-a"},
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Obj()},
		{name: "off: the gating namespaces change nothing", gating: wrap.GatingOff, namespaces: []string{"team-a"},
			pod:  job().Container("app", "busybox", "work").Obj(),
			want: wrapped(job()).Obj()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := gating(tc.gating)
			opts.GatingNamespaces = tc.namespaces
			got := tc.pod.DeepCopy()
			if _, err := wrap.Mutate(got, opts, nil); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("pod (-want,+got):\n%s", diff)
			}
			if !wrap.Wrapped(got, opts) {
				t.Error("not Wrapped")
			}
			// Whether a pod is wrapped does not depend on gating.
			if !wrap.Wrapped(got, testOptions) || !wrap.WrappedByAnyVersion(got, testOptions) {
				t.Error("not Wrapped without the gating options")
			}
			if wrap.Gated(got) != wrap.Gated(tc.want) {
				t.Errorf("Gated = %v", wrap.Gated(got))
			}

			// Reinvocation and re-applies change nothing more.
			again := got.DeepCopy()
			if _, err := wrap.Mutate(again, opts, nil); err != nil {
				t.Fatalf("second wrap.Mutate: %v", err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("second wrap.Mutate changed the pod (-first,+second):\n%s", diff)
			}
		})
	}
}

func TestMutateGateDenies(t *testing.T) {
	job := func() *builders.PodBuilder { return builders.MakePod("p", "ns").Lease("nightly") }
	for _, tc := range []struct {
		name   string
		gating wrap.Gating
		// namespaces are --gating-namespaces; the pod's is ns.
		namespaces []string
		pod        *corev1.Pod
		want       []string // each must appear in the message
	}{
		{name: "a gate that is not a boolean", gating: wrap.GatingOptIn, pod: job().Annotation(wrap.AnnotationGate, "yes").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/gate]: Invalid value: "yes": must be "true" or "false"`}},
		{name: "an empty gate", gating: wrap.GatingDefault, pod: job().Annotation(wrap.AnnotationGate, "").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/gate]: Invalid value: "": must be "true" or "false"`}},
		{name: "a start timeout that is not a duration", gating: wrap.GatingOptIn, pod: job().Annotation(wrap.AnnotationStartTimeout, "soon").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/start-timeout]: Invalid value: "soon": must be a duration above 0 and at most 24h, such as 90s, 5m or 1h30m, or a number of seconds`}},
		{name: "a start timeout of 0", gating: wrap.GatingOptIn, pod: job().Annotation(wrap.AnnotationGate, "true").Annotation(wrap.AnnotationStartTimeout, "0").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/start-timeout]: Invalid value: "0"`}},
		{name: "a negative start timeout", gating: wrap.GatingOptIn, pod: job().Annotation(wrap.AnnotationStartTimeout, "-1s").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/start-timeout]: Invalid value: "-1s"`}},
		{name: "a start timeout over a day", gating: wrap.GatingOptIn, pod: job().Annotation(wrap.AnnotationStartTimeout, "24h0m1s").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/start-timeout]: Invalid value: "24h0m1s"`, "at most 24h"}},
		{name: "off: a pod that asks to be gated", gating: wrap.GatingOff, pod: job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/gate]: Forbidden: gating is off in this cluster (klock-webhook --gating=off, chart value gating): remove the annotation, and the pod waits for its lock in its running container`}},
		{name: "off: a policy's pod that asks to be gated", gating: wrap.GatingOff,
			pod:  job().Annotation(wrap.AnnotationGate, "true").Annotation(wrap.AnnotationPolicy, "p").Container("app", "busybox", "x").Obj(),
			want: []string{"remove the annotation, or spec.gate of the ClusterLockPolicy that sets it"}},
		{name: "opt-in: klock's gate on a pod that did not ask", gating: wrap.GatingOptIn,
			pod:  job().SchedulingGate("example.com/quota").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: []string{`spec.schedulingGates[1].name: Forbidden: the scheduling gate klock.io/lock is klock's, and klock does not gate this pod (gating is opt-in and the pod has no klock.io/gate annotation), so nothing would remove it: remove the gate, or set klock.io/gate: "true"`}},
		{name: "default: klock's gate on a pod that asked not to be gated", gating: wrap.GatingDefault,
			pod:  job().Annotation(wrap.AnnotationGate, "false").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: []string{`klock does not gate this pod (gating is default and klock.io/gate is "false")`}},
		{name: "off: klock's gate", gating: wrap.GatingOff, pod: job().SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: []string{"gating is off and the pod has no klock.io/gate annotation), so nothing would remove it: remove the gate"}},
		{name: "klock's gate on a pod that does not ask for klock", gating: wrap.GatingDefault,
			pod:  builders.MakePod("p", "ns").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: []string{`spec.schedulingGates[0].name: Forbidden: the scheduling gate klock.io/lock is klock's, and only a pod klock wraps (annotated klock.io/lease) is ever let through it: remove the gate`}},
		{name: "gate mistakes are listed with the others", gating: wrap.GatingOptIn,
			pod:  job().Annotation(wrap.AnnotationGate, "yes").Annotation(wrap.AnnotationWait, "soon").Container("app", "busybox", "x").Obj(),
			want: []string{"klock.io/gate", "klock.io/wait"}},
		{name: "opt-in: a pod that asks to be gated outside the gating namespaces", gating: wrap.GatingOptIn, namespaces: []string{"team-a", "team-b"},
			pod: job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/gate]: Forbidden: the gate controller does not act in namespace "ns" (klock-webhook --gating-namespaces, chart value gatingNamespaces): ` +
				`remove the annotation, and the pod waits for its lock in its running container; or have the namespace added to gatingNamespaces`}},
		{name: "default: a pod that asks to be gated outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod:  job().Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "x").Obj(),
			want: []string{`the gate controller does not act in namespace "ns"`, "gatingNamespaces"}},
		{name: "default: a policy's pod that asks to be gated outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod:  job().Annotation(wrap.AnnotationGate, "true").Annotation(wrap.AnnotationPolicy, "p").Container("app", "busybox", "x").Obj(),
			want: []string{`the gate controller does not act in namespace "ns"`, "remove the annotation, or spec.gate of the ClusterLockPolicy that sets it"}},
		{name: "default: klock's gate outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod: job().SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: []string{`spec.schedulingGates[0].name: Forbidden: the scheduling gate klock.io/lock is klock's, and klock does not gate this pod ` +
				`(the gate controller does not act in namespace "ns"), so nothing would remove it: remove the gate`}},
		{name: "default: a pod created wrapped and gated outside the gating namespaces", gating: wrap.GatingDefault, namespaces: []string{"team-a"},
			pod:  job().Container("app", "busybox", "x").Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "x").Gated().Obj(),
			want: []string{`klock does not gate this pod (the gate controller does not act in namespace "ns")`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.pod.DeepCopy()
			opts := gating(tc.gating)
			opts.GatingNamespaces = tc.namespaces
			_, err := wrap.Mutate(got, opts, nil)
			if err == nil {
				t.Fatal("admitted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("message %q is not one line", err)
			}
			if diff := cmp.Diff(tc.pod, got); diff != "" {
				t.Errorf("a denied pod was changed (-before,+after):\n%s", diff)
			}
		})
	}
}

// A pod that does not ask for klock is none of its business, unless it
// carries klock's gate, which nothing would ever remove.
func TestForeignGate(t *testing.T) {
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{name: "no gate", pod: builders.MakePod("p", "ns").Container("app", "busybox", "x").Obj()},
		{name: "a gate of somebody else's", pod: builders.MakePod("p", "ns").SchedulingGate("example.com/quota").Container("app", "busybox", "x").Obj()},
		{name: "klock's gate on a pod klock wraps", pod: builders.MakePod("p", "ns").Lease("x").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj()},
		{name: "klock's gate on a pod klock does not wrap", pod: builders.MakePod("p", "ns").SchedulingGate("example.com/quota").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "x").Obj(),
			want: `spec.schedulingGates[1].name: Forbidden: the scheduling gate klock.io/lock is klock's`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := wrap.ForeignGate(tc.pod)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestStartTimeout(t *testing.T) {
	for _, tc := range []struct {
		value string // "-" for none
		want  time.Duration
		err   bool
	}{
		{value: "-", want: wrap.DefaultStartTimeout},
		{value: "90s", want: 90 * time.Second},
		{value: "1m30s", want: 90 * time.Second},
		{value: "90", want: 90 * time.Second},
		{value: "1.5", want: 1500 * time.Millisecond},
		{value: "24h", want: 24 * time.Hour},
		{value: "86400", want: 24 * time.Hour},
		{value: "86401", err: true},
		{value: "0", err: true},
		{value: "0s", err: true},
		{value: "-5m", err: true},
		{value: "5 minutes", err: true},
		{value: "", err: true},
	} {
		t.Run(tc.value, func(t *testing.T) {
			annotations := map[string]string{wrap.AnnotationLease: "x"}
			if tc.value != "-" {
				annotations[wrap.AnnotationStartTimeout] = tc.value
			}
			got, err := wrap.StartTimeout(annotations)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), `metadata.annotations[klock.io/start-timeout]: Invalid value: "`+tc.value+`"`) {
					t.Fatalf("= %v, %v; want an error naming the annotation and the value", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// The gate's annotations are not klock flags: they leave the wrapped
// command as it was, which is part of what makes a running pod count as
// wrapped.
func TestGateAnnotationsAreNotFlags(t *testing.T) {
	flags, errs := wrap.Flags(map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationGate: "true", wrap.AnnotationStartTimeout: "1m"})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if diff := cmp.Diff([]string{"--lease=x"}, flags); diff != "" {
		t.Errorf("flags (-want,+got):\n%s", diff)
	}
}

// The typo warning knows the gate's annotations.
func TestUnknownKeysKnowsGating(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{key: wrap.AnnotationGate},
		{key: wrap.AnnotationStartTimeout},
		{key: "klock.io/gates", want: []string{`annotation "klock.io/gates" is not one klock knows, and is ignored: did you mean klock.io/gate?`}},
		{key: "klock.io/start-timout", want: []string{`annotation "klock.io/start-timout" is not one klock knows, and is ignored: did you mean klock.io/start-timeout?`}},
	} {
		t.Run(tc.key, func(t *testing.T) {
			got := wrap.UnknownKeys(map[string]string{wrap.AnnotationLease: "x", tc.key: "true"})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("warnings (-want,+got):\n%s", diff)
			}
		})
	}
}

// CheckGate is what the workload handler denies a workload for: values
// its pods would all be denied for, whatever the webhook's gating.
func TestCheckGate(t *testing.T) {
	if errs := wrap.CheckGate(map[string]string{wrap.AnnotationGate: "false", wrap.AnnotationStartTimeout: "10m"}); len(errs) > 0 {
		t.Errorf("good values: %v", errs)
	}
	errs := wrap.CheckGate(map[string]string{wrap.AnnotationGate: "maybe", wrap.AnnotationStartTimeout: "48h"})
	if got := errs.ToAggregate().Error(); !strings.Contains(got, "klock.io/gate") || !strings.Contains(got, "klock.io/start-timeout") {
		t.Errorf("errors %q, want both annotations", got)
	}
}
