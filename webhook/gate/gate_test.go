package gate

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/wrap"
)

// The reservation is the lock the pod's klock will hold, with its
// settings, under the pod's name, marked with the pod's UID.
func TestReservation(t *testing.T) {
	cases := []struct {
		name string
		pod  *builders.PodBuilder
		want klock.Config
	}{
		{name: "a mutex with the defaults", pod: builders.MakePod("nightly-29", "jobs").Lease("nightly"),
			want: klock.Config{Name: "nightly", MaxHolders: 1, Order: klock.OrderFIFO, LeaseDuration: klock.DefaultLeaseDuration}},
		{name: "a counting lock whose waiters race", pod: builders.MakePod("web-1", "apps").Lease("web").
			Annotation(wrap.AnnotationMaxHolders, "2").Annotation(wrap.AnnotationOrder, "any"),
			want: klock.Config{Name: "web", MaxHolders: 2, Order: klock.OrderAny, LeaseDuration: klock.DefaultLeaseDuration}},
		{name: "the pod's timings", pod: builders.MakePod("p", "ns").Lease("x").Annotation(wrap.AnnotationLeaseDuration, "30s"),
			want: klock.Config{Name: "x", MaxHolders: 1, Order: klock.OrderFIFO, LeaseDuration: 30 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := tc.pod.Obj()
			pod.UID = "uid-1"
			cfg, _, err := reservation(pod)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err = cfg.Complete()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Name != tc.want.Name || cfg.Namespace != pod.Namespace || cfg.Identity != pod.Name || cfg.Reservation != "uid-1" ||
				cfg.MaxHolders != tc.want.MaxHolders || cfg.Order != tc.want.Order || cfg.LeaseDuration != tc.want.LeaseDuration {
				t.Errorf("got %+v", cfg)
			}
		})
	}
	if _, _, err := reservation(builders.MakePod("p", "ns").Lease("x").Annotation(wrap.AnnotationMaxHolders, "many").Obj()); err == nil {
		t.Error("a pod whose annotations are not klock's flags got a reservation")
	}
}

func TestStarted(t *testing.T) {
	pod := func(s corev1.ContainerStatus) *corev1.Pod {
		p := builders.MakePod("p", "ns").Lease("x").Container("app", "busybox", "true").Container("side", "busybox", "true").Obj()
		p.Annotations[wrap.AnnotationInjected] = "app"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{s}
		return p
	}
	for _, tc := range []struct {
		name   string
		status corev1.ContainerStatus
		want   bool
	}{
		{"waiting", corev1.ContainerStatus{Name: "app", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{}}}, false},
		{"running", corev1.ContainerStatus{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}, true},
		{"restarted", corev1.ContainerStatus{Name: "app", RestartCount: 1}, true},
		{"another container runs", corev1.ContainerStatus{Name: "side", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}, false},
	} {
		if got := started(pod(tc.status)); got != tc.want {
			t.Errorf("%s: started %v, want %v", tc.name, got, tc.want)
		}
	}
}
