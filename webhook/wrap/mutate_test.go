package wrap_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

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
			name: "max-holders and order come last, after the flags klock had before them",
			pod: job().Annotation(wrap.AnnotationOrder, "any").Annotation(wrap.AnnotationMaxHolders, "3").
				Annotation(wrap.AnnotationWait, "30s").Annotation(wrap.AnnotationLabels, "team=data").Container("app", "busybox", "true").Obj(),
			want: job().Annotation(wrap.AnnotationOrder, "any").Annotation(wrap.AnnotationMaxHolders, "3").
				Annotation(wrap.AnnotationWait, "30s").Annotation(wrap.AnnotationLabels, "team=data").Container("app", "busybox", "true").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--wait=30s", "--labels=team=data", "--max-holders=3", "--order=any", "--", "true").Obj(),
		},
		{
			name: "queue-ttl comes after order",
			pod:  job().Annotation(wrap.AnnotationQueueTTL, "10s").Annotation(wrap.AnnotationOrder, "fifo").Container("app", "busybox", "true").Obj(),
			want: job().Annotation(wrap.AnnotationQueueTTL, "10s").Annotation(wrap.AnnotationOrder, "fifo").Container("app", "busybox", "true").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--order=fifo", "--queue-ttl=10s", "--", "true").Obj(),
		},
		{
			name: "the defaults, said out loud, are passed on as given",
			pod:  job().Annotation(wrap.AnnotationMaxHolders, "1").Annotation(wrap.AnnotationOrder, "fifo").Container("app", "busybox", "true").Obj(),
			want: job().Annotation(wrap.AnnotationMaxHolders, "1").Annotation(wrap.AnnotationOrder, "fifo").Container("app", "busybox", "true").
				Wrapped(0, "/klock-bin/klock", "--lease=nightly", "--max-holders=1", "--order=fifo", "--", "true").Obj(),
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
		{name: "no holders", pod: job().Annotation(wrap.AnnotationMaxHolders, "0").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/max-holders]: Invalid value: "0"`, "give a whole number from 1 to 100"}},
		{name: "more holders than klock allows", pod: job().Annotation(wrap.AnnotationMaxHolders, "101").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/max-holders]: Invalid value: "101"`, "give a whole number from 1 to 100"}},
		{name: "holders not a number", pod: job().Annotation(wrap.AnnotationMaxHolders, "three").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/max-holders]: Invalid value: "three"`, "give a whole number from 1 to 100"}},
		{name: "a queue TTL klock refuses", pod: job().Annotation(wrap.AnnotationQueueTTL, "1s").Container("app", "busybox", "x").Obj(),
			want: []string{"the klock.io/ annotations do not fit together", "invalid queue TTL 1s: must be from 3s"}},
		{name: "unknown order", pod: job().Annotation(wrap.AnnotationOrder, "lifo").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/order]: Invalid value: "lifo"`, "give fifo (first come, first served) or any (waiters race)"}},
		{name: "order in capitals, which klock does not take", pod: job().Annotation(wrap.AnnotationOrder, "FIFO").Container("app", "busybox", "x").Obj(),
			want: []string{`metadata.annotations[klock.io/order]: Invalid value: "FIFO"`}},
		{name: "a counting lock with cleanup", pod: job().Annotation(wrap.AnnotationMaxHolders, "3").Annotation(wrap.AnnotationCleanupLease, "true").Container("app", "busybox", "x").Obj(),
			want: []string{"klock.io/ annotations do not fit together", "cleanup (delete on release) works only with max holders 1"}},
		{name: "a lease name that leaves no room for the queue's", pod: builders.MakePod("p", "ns").Lease(strings.Repeat("a", 250)).Container("app", "busybox", "x").Obj(),
			want: []string{"klock.io/ annotations do not fit together", `the lock also uses the Lease "` + strings.Repeat("a", 250) + `-queue"`}},
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
		{name: "a mount over klock's binary by an uncleaned path", pod: job().Container("app", "busybox", "x").Mount("v", "//klock-bin/./klock").Obj(),
			want: []string{`spec.containers[0].volumeMounts[0].mountPath: Invalid value: "//klock-bin/./klock"`}},
		{name: "a mount over everything", pod: job().Container("app", "busybox", "x").Mount("v", "/").Obj(),
			want: []string{`spec.containers[0].volumeMounts[0].mountPath: Invalid value: "/"`}},
		{name: "klock's variables are set by the pod", pod: job().Container("app", "busybox", "x").Env("KLOCK_IDENTITY", "me").Obj(),
			want: []string{`spec.containers[0].env[0].name: Invalid value: "KLOCK_IDENTITY"`}},
		{name: "no service account token", pod: job().NoServiceAccountToken().Container("app", "busybox", "x").Obj(),
			want: []string{"spec.automountServiceAccountToken: Invalid value: false", "remove automountServiceAccountToken: false"}},
		{name: "no containers", pod: job().Obj(), want: []string{"spec.containers: Required value"}},
		{name: "another container mounts klock's volume", pod: job().Container("app", "busybox", "x").Container("side", "busybox", "y").Mount("klock-bin", "/x").Obj(),
			want: []string{`spec.containers[1].volumeMounts[0].name: Invalid value: "klock-bin": klock's volume is mounted only by klock`}},
		{name: "names only: a dummy installer and a sidecar that runs klock", pod: job().Annotation(wrap.AnnotationInjected, "side").
			InitContainer("klock-install", "busybox", false).Container("app", "busybox", "work").
			Container("side", "busybox", "/klock-bin/klock", "--lease=nightly", "--", "sleep", "1d").Obj(),
			want: []string{`spec.initContainers[0].name: Invalid value: "klock-install": this name is reserved for klock`}},
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

// A pod counts as wrapped only with the whole structure Mutate makes, so
// that names alone (a dummy init container, a sidecar that runs some
// /klock-bin/klock) let nothing pass.
func TestWrapped(t *testing.T) {
	wrapped := func() *corev1.Pod {
		pod := builders.MakePod("p", "ns").Lease("nightly").Container("app", "busybox", "work").Container("side", "envoy", "envoy").Obj()
		pod.Annotations[wrap.AnnotationContainer] = "app"
		if _, err := wrap.Mutate(pod, testOptions, nil); err != nil {
			t.Fatal(err)
		}
		return pod
	}
	for _, tc := range []struct {
		name         string
		edit         func(*corev1.Pod)
		want, anyTag bool
	}{
		{name: "as Mutate made it", edit: func(*corev1.Pod) {}, want: true, anyTag: true},
		{name: "read back with the API server's defaults and service account token", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers[0].TerminationMessagePath = "/dev/termination-log"
			for i := range p.Spec.Containers[0].Env {
				p.Spec.Containers[0].Env[i].ValueFrom.FieldRef.APIVersion = "v1"
			}
			token := corev1.VolumeMount{Name: "kube-api-access-x", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}
			p.Spec.InitContainers[0].VolumeMounts = append([]corev1.VolumeMount{token}, p.Spec.InitContainers[0].VolumeMounts...)
			for i := range p.Spec.Containers {
				p.Spec.Containers[i].VolumeMounts = append([]corev1.VolumeMount{token}, p.Spec.Containers[i].VolumeMounts...)
			}
		}, want: true, anyTag: true},
		// The gate says where a pod waits, not how its klock holds the
		// lock: gated or not, let through or not, it is wrapped.
		{name: "gated", edit: func(p *corev1.Pod) {
			p.Annotations[wrap.AnnotationGate] = "true"
			p.Annotations[wrap.AnnotationStartTimeout] = "1m"
			p.Labels = map[string]string{wrap.LabelGated: "true"}
			p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: wrap.SchedulingGate}}
		}, want: true, anyTag: true},
		{name: "gated, and let through", edit: func(p *corev1.Pod) {
			p.Annotations[wrap.AnnotationGate] = "true"
			p.Labels = map[string]string{wrap.LabelGated: "true"}
		}, want: true, anyTag: true},
		{name: "not to be gated, carrying klock's gate", edit: func(p *corev1.Pod) {
			p.Annotations[wrap.AnnotationGate] = "false"
			p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: wrap.SchedulingGate}}
		}, want: true, anyTag: true},
		{name: "another volume over the binary the wrapped container runs", edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "fake", MountPath: "/klock-bin/klock", SubPath: "klock"})
		}},
		{name: "another volume over the binary, by an uncleaned path", edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "fake", MountPath: "//klock-bin/./klock", SubPath: "klock"})
		}},
		{name: "another volume over the installer's binary", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers[0].VolumeMounts = append(p.Spec.InitContainers[0].VolumeMounts, corev1.VolumeMount{Name: "fake", MountPath: "/klock", SubPath: "klock"})
		}},
		{name: "no command: klock's words as args of the image's entrypoint", edit: func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Command, c.Args = nil, c.Command
		}},
		{name: "the installer after a sidecar of the pod's own", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = append([]corev1.Container{{Name: "side", Image: "busybox", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}}, p.Spec.InitContainers...)
		}},
		{name: "names only: a dummy installer and a sidecar that runs klock", edit: func(p *corev1.Pod) {
			*p = *builders.MakePod("p", "ns").Lease("nightly").Annotation(wrap.AnnotationInjected, "side").
				InitContainer("klock-install", "busybox", false).Container("app", "busybox", "work").
				Container("side", "busybox", "/klock-bin/klock", "--lease=nightly", "--", "sleep", "1d").Obj()
		}},
		{name: "the installer from another image", edit: func(p *corev1.Pod) { p.Spec.InitContainers[0].Image = "evil/klock:v1" }},
		{name: "the installer from another tag", edit: func(p *corev1.Pod) { p.Spec.InitContainers[0].Image = "ghcr.io/klock-io/klock:v0.9" }, anyTag: true},
		{name: "the installer runs another command", edit: func(p *corev1.Pod) { p.Spec.InitContainers[0].Command = []string{"/klock", "version"} }},
		{name: "the installer with a mount over /klock", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers[0].VolumeMounts = append(p.Spec.InitContainers[0].VolumeMounts, corev1.VolumeMount{Name: "fake", MountPath: "/klock", SubPath: "klock"})
		}},
		{name: "a second installer", edit: func(p *corev1.Pod) { p.Spec.InitContainers = append(p.Spec.InitContainers, p.Spec.InitContainers[0]) }},
		{name: "an init container that can rewrite the binary", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "swap", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: "klock-bin", MountPath: "/x"}}})
		}},
		{name: "a sidecar that mounts klock's volume", edit: func(p *corev1.Pod) {
			p.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: "klock-bin", MountPath: "/x"}}
		}},
		{name: "the volume from the host", edit: func(p *corev1.Pod) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp"}}
		}},
		{name: "the mount writable", edit: func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts[0].ReadOnly = false }},
		{name: "klock's identity set by the pod", edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].Env[1] = corev1.EnvVar{Name: "KLOCK_IDENTITY", Value: "other"}
		}},
		{name: "another lease than the annotation's", edit: func(p *corev1.Pod) { p.Annotations[wrap.AnnotationLease] = "other" }},
		{name: "an option the flags do not carry", edit: func(p *corev1.Pod) { p.Annotations[wrap.AnnotationWait] = "10s" }},
		// A holder count written on a running pod must not make it pass
		// for a holder of more Leases than its klock uses.
		{name: "a holder count the flags do not carry", edit: func(p *corev1.Pod) { p.Annotations[wrap.AnnotationMaxHolders] = "5" }},
		{name: "another container than the one named", edit: func(p *corev1.Pod) { p.Annotations[wrap.AnnotationContainer] = "side" }},
		{name: "klock behind a shell", edit: func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Command = append([]string{"sh", "-c", "sleep 1d"}, c.Command...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := wrapped()
			tc.edit(pod)
			if got := wrap.Wrapped(pod, testOptions); got != tc.want {
				t.Errorf("Wrapped = %v, want %v", got, tc.want)
			}
			if got := wrap.WrappedByAnyVersion(pod, testOptions); got != tc.anyTag {
				t.Errorf("WrappedByAnyVersion = %v, want %v", got, tc.anyTag)
			}
		})
	}
}

// Another webhook that wraps commands (such as a secrets injector that
// runs its own binary, then the argv it was given) may run after klock;
// on reinvocation klock goes back in front, and runs it under the lock.
func TestMutateReinvoked(t *testing.T) {
	pod := builders.MakePod("p", "ns").Lease("nightly").Container("app", "busybox", "work", "--now").Obj()
	if _, err := wrap.Mutate(pod, testOptions, nil); err != nil {
		t.Fatal(err)
	}
	c := &pod.Spec.Containers[0]
	c.Command, c.Args = []string{"/vault/vault-env"}, c.Command // as such a webhook does
	warnings, err := wrap.Mutate(pod, testOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/klock-bin/klock", "--lease=nightly", "--", "/vault/vault-env", "work", "--now"}
	if diff := cmp.Diff(want, c.Command); diff != "" || len(c.Args) > 0 {
		t.Errorf("command (-want,+got):\n%s\nargs %q", diff, c.Args)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"/vault/vault-env"`) {
		t.Errorf("warnings %q, want one naming the other wrapper", warnings)
	}
	if !wrap.Wrapped(pod, testOptions) {
		t.Error("not Wrapped after klock went back in front")
	}
	again := pod.DeepCopy()
	if _, err := wrap.Mutate(again, testOptions, nil); err != nil || !cmp.Equal(pod, again) {
		t.Errorf("a third call changed the pod (err %v):\n%s", err, cmp.Diff(pod, again))
	}
}

// Where the webhook knows the API server as pods reach it, klock in the pod
// talks to that server only, trusting only its CA: a KUBECONFIG or a
// ~/.kube/config of the pod's could otherwise point klock at a server of
// the pod author's that grants every lock.
func TestMutatePinsTheAPIServer(t *testing.T) {
	opts := testOptions
	opts.APIServer, opts.APICA = "https://10.96.0.1:443", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
	pod := builders.MakePod("p", "ns").Lease("nightly").Container("app", "busybox", "work").Env("KUBECONFIG", "/evil/config").Obj()
	if _, err := wrap.Mutate(pod, opts, nil); err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	want := []string{"/klock-bin/klock", "--lease=nightly", "--api-server=https://10.96.0.1:443", "--", "work"}
	if diff := cmp.Diff(want, c.Command); diff != "" {
		t.Errorf("command (-want,+got):\n%s", diff)
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "KLOCK_API_CA" && e.Value == opts.APICA }) {
		t.Errorf("env %v has no KLOCK_API_CA with the CA", c.Env)
	}
	if !wrap.Wrapped(pod, opts) || wrap.Wrapped(pod, testOptions) {
		t.Error("Wrapped does not tell a pinned pod by its server")
	}
	forged := pod.DeepCopy()
	for i := range forged.Spec.Containers[0].Env {
		if forged.Spec.Containers[0].Env[i].Name == "KLOCK_API_CA" {
			forged.Spec.Containers[0].Env[i].Value = "the pod author's CA"
		}
	}
	if wrap.Wrapped(forged, opts) {
		t.Error("a pod with another CA passes for wrapped")
	}

	own := builders.MakePod("p", "ns").Lease("nightly").Container("app", "busybox", "work").Env("KLOCK_API_CA", "mine").Obj()
	if _, err := wrap.Mutate(own, opts, nil); err == nil || !strings.Contains(err.Error(), `spec.containers[0].env[0].name: Invalid value: "KLOCK_API_CA": klock sets this variable itself`) {
		t.Errorf("a pod that sets KLOCK_API_CA: %v", err)
	}
}
