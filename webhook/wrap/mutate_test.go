package wrap_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/wrap"
)

var testOptions = wrap.Options{Image: "ghcr.io/klock-io/klock:v1", ImagePullPolicy: corev1.PullIfNotPresent}

func TestMutate(t *testing.T) {
	job := func() *builders.PodBuilder { return builders.MakePod("p", "ns").Lease("nightly") }
	image := &wrap.ImageCommand{Entrypoint: []string{"/entry", "--from-image"}, Cmd: []string{"serve", "$(NOT_A_VAR)"}}
	for _, tc := range []struct {
		name         string
		pod          *corev1.Pod
		image        *wrap.ImageCommand
		want         *corev1.Pod
		wantWarnings []string
	}{
		{
			name: "no annotation: untouched",
			pod:  builders.MakePod("p", "ns").Container("app", "busybox", "sh").Obj(),
			want: builders.MakePod("p", "ns").Container("app", "busybox", "sh").Obj(),
		},
		{
			name: "command and args are folded into klock's argv",
			pod:  job().Container("app", "busybox", "sh", "-c").Args("echo 'a b'; exit 3").Obj(),
			want: job().Container("app", "busybox", "sh", "-c").Args("echo 'a b'; exit 3").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "sh", "-c", "echo 'a b'; exit 3").Obj(),
		},
		{
			name:  "args only: the entrypoint comes from the image",
			pod:   job().Container("app", "img").Args("run", "$(POD_NAME)").Obj(),
			image: image,
			want: job().Container("app", "img").Args("run", "$(POD_NAME)").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "/entry", "--from-image", "run", "$(POD_NAME)").Obj(),
		},
		{
			name:  "no command: the image's entrypoint and cmd, with $ escaped so Kubernetes leaves them alone",
			pod:   job().Container("app", "img").Obj(),
			image: image,
			want: job().Container("app", "img").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "/entry", "--from-image", "serve", "$$(NOT_A_VAR)").Obj(),
		},
		{
			name: "annotations become flags, in a fixed order; cleanup-lease false adds none",
			pod: job().Annotation(wrap.AnnotationLabels, "team=data").Annotation(wrap.AnnotationWait, "30s").
				Annotation(wrap.AnnotationConflictExitCode, "0").Annotation(wrap.AnnotationSignal, "INT").
				Annotation(wrap.AnnotationKillAfter, "5").Annotation(wrap.AnnotationLeaseDuration, "20s").
				Annotation(wrap.AnnotationRenewDeadline, "12s").Annotation(wrap.AnnotationRetryPeriod, "1s").
				Annotation(wrap.AnnotationCleanupLease, "false").Container("app", "busybox", "true").Obj(),
			want: job().Annotation(wrap.AnnotationLabels, "team=data").Annotation(wrap.AnnotationWait, "30s").
				Annotation(wrap.AnnotationConflictExitCode, "0").Annotation(wrap.AnnotationSignal, "INT").
				Annotation(wrap.AnnotationKillAfter, "5").Annotation(wrap.AnnotationLeaseDuration, "20s").
				Annotation(wrap.AnnotationRenewDeadline, "12s").Annotation(wrap.AnnotationRetryPeriod, "1s").
				Annotation(wrap.AnnotationCleanupLease, "false").Container("app", "busybox", "true").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--wait=30s", "--conflict-exit-code=0",
					"--lease-duration=20s", "--renew-deadline=12s", "--retry-period=1s", "--signal=INT",
					"--kill-after=5", "--labels=team=data", "--", "true").Obj(),
		},
		{
			name: "cleanup-lease true",
			pod:  job().Annotation(wrap.AnnotationCleanupLease, "true").Container("app", "busybox", "true").Obj(),
			want: job().Annotation(wrap.AnnotationCleanupLease, "true").Container("app", "busybox", "true").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--cleanup-lease=true", "--", "true").Obj(),
		},
		{
			name: "klock.io/container picks the container",
			pod:  job().Annotation(wrap.AnnotationContainer, "main").Container("proxy", "envoy", "envoy").Container("main", "busybox", "work").Obj(),
			want: job().Annotation(wrap.AnnotationContainer, "main").Container("proxy", "envoy", "envoy").Container("main", "busybox", "work").
				Wrapped(1, "/klock-bin/klock", "--lease=nightly", "--", "work").Obj(),
		},
		{
			name: "kubectl's default container",
			pod:  job().Annotation(wrap.AnnotationDefaultContainer, "main").Container("proxy", "envoy", "envoy").Container("main", "busybox", "work").Obj(),
			want: job().Annotation(wrap.AnnotationDefaultContainer, "main").Container("proxy", "envoy", "envoy").Container("main", "busybox", "work").
				Wrapped(1, "/klock-bin/klock", "--lease=nightly", "--", "work").Obj(),
		},
		{
			name: "several containers, none named: the first, with a warning",
			pod:  job().Container("main", "busybox", "work").Container("logger", "fluent", "fluent").Obj(),
			want: job().Container("main", "busybox", "work").Container("logger", "fluent", "fluent").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "work").Obj(),
			wantWarnings: []string{`klock wraps the first container, "main"; to wrap another, name it in the klock.io/container annotation`},
		},
		{
			name: "init containers, native sidecars and volumes of the pod's own stay, after klock's installer",
			pod: job().InitContainer("migrate", "tool", false).InitContainer("mesh", "proxy", true).Volume("data").
				Container("app", "busybox", "work").Mount("data", "/data").Obj(),
			want: job().InitContainer("migrate", "tool", false).InitContainer("mesh", "proxy", true).Volume("data").
				Container("app", "busybox", "work").Mount("data", "/data").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "work").Obj(),
		},
		{
			name: "a liveness probe gets a warning",
			pod:  job().Container("app", "busybox", "work").LivenessProbe().Obj(),
			want: job().Container("app", "busybox", "work").LivenessProbe().
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--", "work").Obj(),
			wantWarnings: []string{`container "app" has a livenessProbe, but its command does not start until klock holds the lease: the probe may restart the container while it waits; use a startupProbe, or klock.io/wait to bound the wait`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.pod.DeepCopy()
			warnings, err := wrap.Mutate(got, testOptions, tc.image)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("pod (-want,+got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarnings, warnings); diff != "" {
				t.Errorf("warnings (-want,+got):\n%s", diff)
			}

			// Reinvocation and re-applies change nothing more.
			again := got.DeepCopy()
			if _, err := wrap.Mutate(again, testOptions, tc.image); err != nil {
				t.Fatalf("second wrap.Mutate: %v", err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("second wrap.Mutate changed the pod (-first,+second):\n%s", diff)
			}
		})
	}
}

func TestMutateDenies(t *testing.T) {
	job := func() *builders.PodBuilder { return builders.MakePod("p", "ns").Lease("nightly") }
	for _, tc := range []struct {
		name  string
		pod   *corev1.Pod
		image *wrap.ImageCommand
		want  []string // each must appear in the message
	}{
		{name: "invalid lease name", pod: builders.MakePod("p", "ns").Lease("Nightly_Job").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/lease]: Invalid value: "Nightly_Job"`, "RFC 1123"}},
		{name: "bad duration", pod: job().Annotation(wrap.AnnotationWait, "soon").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/wait]: Invalid value: "soon"`, "give one such as 30s"}},
		{name: "bad exit code", pod: job().Annotation(wrap.AnnotationConflictExitCode, "300").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/conflict-exit-code]: Invalid value: "300"`, "0 to 255"}},
		{name: "bad signal", pod: job().Annotation(wrap.AnnotationSignal, "NOPE").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/signal]: Invalid value: "NOPE"`, "give a number or one of"}},
		{name: "bad bool", pod: job().Annotation(wrap.AnnotationCleanupLease, "yes please").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/cleanup-lease]: Invalid value: "yes please"`, `"true" or "false"`}},
		{name: "bad labels", pod: job().Annotation(wrap.AnnotationLabels, "novalue").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/labels]: Invalid value: "novalue"`, "key=value"}},
		{name: "fractional lease duration", pod: job().Annotation(wrap.AnnotationLeaseDuration, "1500ms").Container("app", "busybox", "x").Obj(),
			want: []string{"klock.io/ annotations do not fit together", "whole number of seconds"}},
		{name: "renew deadline past the lease duration", pod: job().Annotation(wrap.AnnotationLeaseDuration, "15s").Annotation(wrap.AnnotationRenewDeadline, "20s").Container("app", "busybox", "x").Obj(),
			want: []string{"below the lease duration 15s"}},
		{name: "several mistakes are all reported", pod: job().Annotation(wrap.AnnotationWait, "soon").Annotation(wrap.AnnotationSignal, "NOPE").Container("app", "busybox", "x").Obj(),
			want: []string{"klock.io/wait", "klock.io/signal"}},
		{name: "a named container that does not exist", pod: job().Annotation(wrap.AnnotationContainer, "mian").Container("main", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/container]: Not found: "mian (the pod's containers are main)"`}},
		{name: "no command and no image entrypoint known", pod: job().Container("app", "img").Obj(),
			want: []string{"spec.containers[0].command: Required value", "set command (and args) in the pod spec"}},
		{name: "an image that runs nothing", pod: job().Container("app", "img").Obj(), image: &wrap.ImageCommand{},
			want: []string{`image "img" has neither ENTRYPOINT nor CMD`}},
		{name: "the volume name is taken", pod: job().Volume("klock-bin").Container("app", "busybox", "x").Obj(),
			want: []string{`spec.volumes[0].name: Invalid value: "klock-bin": this name is reserved for klock`}},
		{name: "the init container name is taken", pod: job().InitContainer("klock-install", "x", false).Container("app", "busybox", "x").Obj(),
			want: []string{`spec.initContainers[0].name: Invalid value: "klock-install"`}},
		{name: "the mount path is taken", pod: job().Container("app", "busybox", "x").Mount("v", "/klock-bin").Obj(),
			want: []string{`spec.containers[0].volumeMounts[0].mountPath: Invalid value: "/klock-bin"`}},
		{name: "klock's variables are set by the pod", pod: job().Container("app", "busybox", "x").Env("KLOCK_IDENTITY", "me").Obj(),
			want: []string{`spec.containers[0].env[0].name: Invalid value: "KLOCK_IDENTITY"`}},
		{name: "no service account token", pod: job().NoServiceAccountToken().Container("app", "busybox", "x").Obj(),
			want: []string{"spec.automountServiceAccountToken: Invalid value: false", "remove automountServiceAccountToken: false"}},
		{name: "no containers", pod: job().Obj(), want: []string{"spec.containers: Required value"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.pod.DeepCopy()
			_, err := wrap.Mutate(got, testOptions, tc.image)
			if err == nil {
				t.Fatal("admitted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message %q does not contain %q", err, want)
				}
			}
			if diff := cmp.Diff(tc.pod, got); diff != "" {
				t.Errorf("a denied pod was changed (-before,+after):\n%s", diff)
			}
		})
	}
}
