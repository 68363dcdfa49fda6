// Package wrap says what wrapping a pod with klock is, as pure functions
// with no HTTP and no API client in them: which annotations ask for it and
// the klock flags they stand for (Flags), whether a pod asks (Wants) or is
// wrapped already (Wrapped), and the change itself (Mutate): an init
// container copies the klock binary into a shared volume, and the target
// container's command becomes `klock --lease=<lease> [flags] -- <original
// argv>`. The admission handlers, the policies and the controllers all
// build on it, so it imports none of them; keys.go holds the annotation and
// label keys they share.
package wrap

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	"github.com/klock-io/klock/internal/cli"
)

// Options apply to every pod the webhook wraps.
type Options struct {
	// Image is the klock image, which holds klock at /klock.
	Image           string
	ImagePullPolicy corev1.PullPolicy
}

// ImageCommand is what an image runs when the pod does not say: its
// ENTRYPOINT and CMD.
type ImageCommand struct {
	Entrypoint []string
	Cmd        []string
}

var annotationsPath = field.NewPath("metadata", "annotations")

// Wants reports whether pod asks to be wrapped.
func Wants(pod *corev1.Pod) bool {
	_, ok := pod.Annotations[AnnotationLease]
	return ok
}

// Wrapped reports whether pod has been wrapped already: the init container
// is there and a container runs klock.
func Wrapped(pod *corev1.Pod) bool {
	hasInit := slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName })
	runsKlock := slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool {
		return len(c.Command) > 0 && c.Command[0] == BinaryPath
	})
	return hasInit && runsKlock
}

// Target returns the index in pod.Spec.Containers of the container to wrap:
// the one named by klock.io/container, else by kubectl's default-container
// annotation, else the first.
func Target(pod *corev1.Pod) (int, *field.Error) {
	for _, key := range []string{AnnotationContainer, AnnotationDefaultContainer} {
		name, ok := pod.Annotations[key]
		if !ok {
			continue
		}
		i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name })
		if i < 0 {
			return -1, field.NotFound(annotationsPath.Key(key), fmt.Sprintf("%s (the pod's containers are %s)", name, containerNames(pod)))
		}
		return i, nil
	}
	if len(pod.Spec.Containers) == 0 {
		return -1, field.Required(field.NewPath("spec", "containers"), "a pod needs a container to wrap")
	}
	return 0, nil
}

func containerNames(pod *corev1.Pod) string {
	var names []string
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}

// Mutate wraps pod in place: it adds the volume and the init container,
// and makes the target container run its original argv under klock. image
// is the target container's image command, needed only when the container
// sets no command (see Target). A pod that does not ask for klock, or is
// wrapped already, is left as it is. The error, when not nil, is a
// field.ErrorList aggregate that says what to fix; the pod must then be
// denied, never admitted unwrapped.
func Mutate(pod *corev1.Pod, opts Options, image *ImageCommand) (warnings []string, err error) {
	if !Wants(pod) || Wrapped(pod) {
		return nil, nil
	}
	var errs field.ErrorList
	flags, ferrs := Flags(pod.Annotations)
	errs = append(errs, ferrs...)
	target, ferr := Target(pod)
	if ferr != nil {
		return nil, append(errs, ferr).ToAggregate()
	}
	c := &pod.Spec.Containers[target]
	errs = append(errs, collisions(pod, c, target)...)
	if pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken {
		errs = append(errs, field.Invalid(field.NewPath("spec", "automountServiceAccountToken"), false,
			"klock needs the pod's service account token to hold the Lease: remove automountServiceAccountToken: false, or remove the "+AnnotationLease+" annotation"))
	}
	argv, ferr := originalArgv(c, target, image)
	if ferr != nil {
		errs = append(errs, ferr)
	}
	if len(errs) > 0 {
		return nil, errs.ToAggregate()
	}

	if _, named := pod.Annotations[AnnotationContainer]; !named && len(pod.Spec.Containers) > 1 {
		if _, named := pod.Annotations[AnnotationDefaultContainer]; !named {
			warnings = append(warnings, fmt.Sprintf("klock wraps the first container, %q; to wrap another, name it in the %s annotation", c.Name, AnnotationContainer))
		}
	}
	if c.LivenessProbe != nil {
		warnings = append(warnings, fmt.Sprintf("container %q has a livenessProbe, but its command does not start until klock holds the lease: the probe may restart the container while it waits; use a startupProbe, or %s to bound the wait", c.Name, AnnotationWait))
	}

	c.Command = append(append([]string{BinaryPath}, flags...), append([]string{"--"}, argv...)...)
	c.Args = nil
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: VolumeName, MountPath: MountPath, ReadOnly: true})
	c.Env = append(c.Env,
		corev1.EnvVar{Name: cli.EnvNamespace, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		corev1.EnvVar{Name: cli.EnvIdentity, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name: VolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("32Mi")),
		}},
	})
	pod.Spec.InitContainers = append([]corev1.Container{installer(opts)}, pod.Spec.InitContainers...)
	pod.Annotations[AnnotationInjected] = c.Name
	return warnings, nil
}

// collisions finds objects of the pod's own that use the names the webhook
// adds. They are denied rather than overwritten.
func collisions(pod *corev1.Pod, c *corev1.Container, target int) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	reserved := func(path *field.Path, name string) {
		errs = append(errs, field.Invalid(path, name, "this name is reserved for klock, which adds its own; rename yours"))
	}
	for i, v := range pod.Spec.Volumes {
		if v.Name == VolumeName {
			reserved(spec.Child("volumes").Index(i).Child("name"), v.Name)
		}
	}
	for i, ic := range pod.Spec.InitContainers {
		if ic.Name == InitContainerName {
			reserved(spec.Child("initContainers").Index(i).Child("name"), ic.Name)
		}
	}
	for i, cc := range pod.Spec.Containers {
		if cc.Name == InitContainerName {
			reserved(spec.Child("containers").Index(i).Child("name"), cc.Name)
		}
	}
	cpath := spec.Child("containers").Index(target)
	for i, m := range c.VolumeMounts {
		if m.MountPath == MountPath || strings.HasPrefix(m.MountPath, MountPath+"/") {
			reserved(cpath.Child("volumeMounts").Index(i).Child("mountPath"), m.MountPath)
		}
	}
	for i, e := range c.Env {
		if e.Name == cli.EnvNamespace || e.Name == cli.EnvIdentity {
			errs = append(errs, field.Invalid(cpath.Child("env").Index(i).Child("name"), e.Name,
				"klock sets this variable itself, to the pod's namespace and name; remove it"))
		}
	}
	return errs
}

// originalArgv is what the container would run without klock: command and
// args as Kubernetes combines them with the image's ENTRYPOINT and CMD.
func originalArgv(c *corev1.Container, target int, image *ImageCommand) ([]string, *field.Error) {
	path := field.NewPath("spec", "containers").Index(target)
	if len(c.Command) > 0 {
		return append(slices.Clone(c.Command), c.Args...), nil
	}
	if image == nil {
		return nil, field.Required(path.Child("command"), fmt.Sprintf("klock must know what container %q runs, and its image's entrypoint could not be read: set command (and args) in the pod spec", c.Name))
	}
	// Kubernetes expands $(VAR) in command and args, but not in what the
	// image says; once moved into command, the image's words must keep
	// their meaning, so every $ is escaped as $$.
	argv := escape(image.Entrypoint)
	if len(c.Args) > 0 {
		argv = append(argv, c.Args...)
	} else {
		argv = append(argv, escape(image.Cmd)...)
	}
	if len(argv) == 0 {
		return nil, field.Required(path.Child("command"), fmt.Sprintf("container %q sets no command and its image %q has neither ENTRYPOINT nor CMD: set command in the pod spec", c.Name, c.Image))
	}
	return argv, nil
}

func escape(words []string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = strings.ReplaceAll(w, "$", "$$")
	}
	return out
}

// installer is the init container that copies klock into the volume. The
// klock image has no shell or cp, so klock copies itself.
func installer(opts Options) corev1.Container {
	return corev1.Container{
		Name:            InitContainerName,
		Image:           opts.Image,
		ImagePullPolicy: opts.ImagePullPolicy,
		Command:         []string{ImageBinaryPath, "install", BinaryPath},
		VolumeMounts:    []corev1.VolumeMount{{Name: VolumeName, MountPath: MountPath}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("200m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To(int64(65532)),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}
