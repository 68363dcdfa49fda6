package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/wrap"
)

// webhookDemo: the webhook wraps an annotated CronJob's pods and a
// Deployment's, then two wrapped pods' commands contend as the pods would
// run them.
func webhookDemo(cp *framework.ControlPlane, klockBin string) error {
	fmt.Println("\n== The admission webhook ==")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := cp.ServeWebhook(ctx, "ghcr.io/klock-io/klock:demo"); err != nil {
		return err
	}
	say("demo", "klock-webhook serves; the MutatingWebhookConfiguration from deploy/ is installed")
	const ns = "default"
	if err := cp.GrantLeases(ctx, ns, "default"); err != nil {
		return err
	}

	template := corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyOnFailure,
		Containers: []corev1.Container{{Name: "report", Image: "busybox:1",
			Command: []string{"sh", "-c"}, Args: []string{`echo "report by $HOSTNAME"; sleep 2; echo "report done"`}}},
	}}
	cj := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly-report", Annotations: map[string]string{
			wrap.AnnotationLease: "nightly-report", wrap.AnnotationWait: "1m"}},
		Spec: batchv1.CronJobSpec{Schedule: "*/1 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template}}},
	}
	say("demo", "$ kubectl create cronjob nightly-report ... with annotations klock.io/lease=nightly-report, klock.io/wait=1m")
	cj, err := cp.Client.BatchV1().CronJobs(ns).Create(ctx, cj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	say("demo", "the CronJob's pod template now carries %v", klockAnnotations(cj.Spec.JobTemplate.Spec.Template.Annotations))

	// No controller manager runs here: create the pods its Jobs would make.
	var pods []*corev1.Pod
	for _, name := range []string{"nightly-report-29000001-a", "nightly-report-29000002-b"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: cj.Spec.JobTemplate.Spec.Template.Annotations},
			Spec: *cj.Spec.JobTemplate.Spec.Template.Spec.DeepCopy()}
		stored, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		pods = append(pods, stored)
	}
	c := pods[0].Spec.Containers[0]
	say("demo", "pod %s, as written:  command %q args %q", pods[0].Name, template.Spec.Containers[0].Command, template.Spec.Containers[0].Args)
	say("demo", "pod %s, as admitted: command %q", pods[0].Name, c.Command)
	say("demo", "  + init container %s (%s) copies klock into volume %s", pods[0].Spec.InitContainers[0].Name, pods[0].Spec.InitContainers[0].Image, pods[0].Spec.Volumes[0].Name)

	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "singleton", Annotations: map[string]string{wrap.AnnotationLease: "singleton"}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "singleton"}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "singleton"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"sleep", "infinity"}}}},
			},
		},
	}
	say("demo", "$ kubectl create deployment singleton ... with annotation klock.io/lease=singleton")
	if dep, err = cp.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return err
	}
	say("demo", "the Deployment's pod template now carries %v", klockAnnotations(dep.Spec.Template.Annotations))

	fmt.Println("\n== The two CronJob pods' commands, run as the pods would run them ==")
	var wg sync.WaitGroup
	for i, p := range pods {
		argv := p.Spec.Containers[0].Command
		argv[0] = klockBin // /klock-bin/klock in the pod
		cmd := exec.Command(argv[0], append([]string{"--kubeconfig", cp.Kubeconfig}, argv[1:]...)...)
		// What the downward API gives the container, and its hostname.
		cmd.Env = append(os.Environ(), "KLOCK_NAMESPACE="+ns, "KLOCK_IDENTITY="+p.Name, "HOSTNAME="+p.Name)
		who := string(rune('A' + i))
		say(who, "pod %s starts", p.Name)
		if err := runShown(&wg, who, cmd); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	wg.Wait()
	return nil
}

func klockAnnotations(a map[string]string) string {
	var parts []string
	for k, v := range a {
		if strings.HasPrefix(k, wrap.AnnotationPrefix) {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, ", ")
}
