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
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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
	// APIServer, when set, is the API server's URL as pods reach it, and
	// APICA its CA (PEM): klock in the pod talks to that server, trusting
	// that CA only (--api-server), whatever the pod's environment,
	// kubeconfig or mounts say.
	APIServer string
	APICA     string
	// Gating says which wrapped pods Mutate gates: it gives them
	// SchedulingGate and LabelGated, and they wait for their lock
	// unscheduled until the gate controller removes the gate. The zero
	// value is GatingOptIn. Wrapped does not depend on it: a pod is
	// wrapped, gated or not.
	Gating Gating
	// GatingNamespaces, when not empty, are the only namespaces where
	// the gate controller acts (klock-webhook --gating-namespaces): its
	// cache and RBAC hold no pod elsewhere, so a pod gated there would
	// wait for ever. Mutate gates no pod outside them, and denies one
	// that asks to be gated. Empty: every namespace.
	GatingNamespaces []string
}

// flags are klock's flags for a pod with annotations, wrapped with opts.
func (opts Options) flags(annotations map[string]string) ([]string, field.ErrorList) {
	flags, errs := Flags(annotations)
	if opts.APIServer != "" {
		flags = append(flags, "--api-server="+opts.APIServer)
	}
	return flags, errs
}

// env is what the wrapped container gets: klock's namespace and identity,
// and the CA it trusts with APIServer.
func (opts Options) env() []corev1.EnvVar {
	e := env()
	if opts.APIServer != "" {
		e = append(e, corev1.EnvVar{Name: cli.EnvAPICA, Value: opts.APICA})
	}
	return e
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

// Wrapped reports whether pod runs under klock as Mutate wraps it with
// opts, for the klock.io/ annotations it carries (see recognise), with klock
// first in the wrapped container's argv. Names alone prove nothing: an
// init container called klock-install beside a sidecar that runs some
// /klock-bin/klock is not wrapped.
func Wrapped(pod *corev1.Pod, opts Options) bool {
	_, at, ok := recognise(pod, opts, func(image string) bool { return image == opts.Image })
	return ok && at == 0
}

// WrappedByAnyVersion is Wrapped with the installer's image allowed to be
// any tag or digest of opts.Image's repository: for pods that started
// before the webhook was upgraded to another klock image.
func WrappedByAnyVersion(pod *corev1.Pod, opts Options) bool {
	_, at, ok := recognise(pod, opts, func(image string) bool { return repository(image) == repository(opts.Image) })
	return ok && at == 0
}

// wrappedAt is recognise with the configured image, for Mutate. Only a
// pod with an installer can be wrapped already: a fresh pod is spared the
// check, which parses its annotations as klock does.
func (opts Options) wrappedAt(pod *corev1.Pod) (target, at int, ok bool) {
	if !slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName }) {
		return 0, 0, false
	}
	return recognise(pod, opts, func(image string) bool { return image == opts.Image })
}

// repository is an image reference without its tag and digest.
func repository(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
		image = image[:i]
	}
	return image
}

// recognise finds klock's wrapping in pod, as Mutate makes it for the
// pod's annotations: the klock.io/injected annotation names the container
// Target picks; the pod has klock's volume, an emptyDir, and one init
// container that runs the installer from an image that klockImage accepts;
// no other container mounts the volume (one that did could replace the
// binary); the target container mounts it read-only and gets klock's
// variables; and its argv (command, then args) holds klock's head,
// `/klock-bin/klock <flags for the annotations> --`, at index at. at is 0
// unless another webhook has put its own wrapper in front of klock's.
//
// It compares what decides which program runs, with what arguments, and
// not the rest (resources, security context, fields the API server
// defaults), so that it holds for pods read back from the API server.
func recognise(pod *corev1.Pod, opts Options, klockImage func(string) bool) (target, at int, ok bool) {
	flags, errs := opts.flags(pod.Annotations)
	target, ferr := Target(pod)
	if len(errs) > 0 || ferr != nil {
		return 0, 0, false
	}
	c := &pod.Spec.Containers[target]
	if pod.Annotations[AnnotationInjected] != c.Name {
		return 0, 0, false
	}
	volumes := 0
	for _, v := range pod.Spec.Volumes {
		if v.Name != VolumeName {
			continue
		}
		volumes++
		if v.EmptyDir == nil || !equality.Semantic.DeepEqual(v.VolumeSource, corev1.VolumeSource{EmptyDir: v.EmptyDir}) {
			return 0, 0, false
		}
	}
	if volumes != 1 {
		return 0, 0, false
	}
	// The installer runs first, before any sidecar of the pod's own could
	// reach the volume through a shared process namespace.
	if len(pod.Spec.InitContainers) == 0 || !isInstaller(pod.Spec.InitContainers[0], klockImage) {
		return 0, 0, false
	}
	for _, ic := range pod.Spec.InitContainers[1:] {
		if ic.Name == InitContainerName || mounts(ic.VolumeMounts) > 0 {
			return 0, 0, false
		}
	}
	for i, cc := range pod.Spec.Containers {
		if i != target && mounts(cc.VolumeMounts) > 0 {
			return 0, 0, false
		}
	}
	for _, ec := range pod.Spec.EphemeralContainers {
		if mounts(ec.VolumeMounts) > 0 {
			return 0, 0, false
		}
	}
	if mounts(c.VolumeMounts) != 1 || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return sameMount(m, mount()) }) ||
		slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name != VolumeName && hidesKlock(m.MountPath, BinaryPath) }) {
		return 0, 0, false
	}
	// Mutate always writes the command: without one, the container would
	// run its image's ENTRYPOINT, with klock's words only as its args.
	if len(c.Command) == 0 {
		return 0, 0, false
	}
	for _, want := range opts.env() {
		named := slices.DeleteFunc(slices.Clone(c.Env), func(e corev1.EnvVar) bool { return e.Name != want.Name })
		if len(named) != 1 {
			return 0, 0, false
		}
		got := named[0]
		if want.ValueFrom == nil {
			if got.ValueFrom != nil || got.Value != want.Value {
				return 0, 0, false
			}
			continue
		}
		if got.Value != "" || got.ValueFrom == nil || got.ValueFrom.FieldRef == nil ||
			!equality.Semantic.DeepEqual(*got.ValueFrom, corev1.EnvVarSource{FieldRef: got.ValueFrom.FieldRef}) ||
			got.ValueFrom.FieldRef.FieldPath != want.ValueFrom.FieldRef.FieldPath {
			return 0, 0, false
		}
	}
	at = index(append(slices.Clone(c.Command), c.Args...), head(flags))
	return target, at, at >= 0
}

// isInstaller reports whether c runs what the installer runs: klock's
// install command, from an image klockImage accepts, with klock's volume
// as its only mount, nothing else in its environment, and not as a
// sidecar.
func isInstaller(c corev1.Container, klockImage func(string) bool) bool {
	want := installer(Options{})
	// Other mounts are the API server's own (the service account token's)
	// as long as none can replace the binary it runs or the one it writes.
	other := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name != VolumeName && (hidesKlock(m.MountPath, ImageBinaryPath) || hidesKlock(m.MountPath, BinaryPath))
	})
	return c.Name == InitContainerName && klockImage(c.Image) && slices.Equal(c.Command, want.Command) && len(c.Args) == 0 && c.WorkingDir == "" &&
		len(c.Env) == 0 && len(c.EnvFrom) == 0 && len(c.VolumeDevices) == 0 && c.RestartPolicy == nil &&
		mounts(c.VolumeMounts) == 1 && slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return sameMount(m, want.VolumeMounts[0]) }) && !other
}

// hidesKlock reports whether a mount at mountPath could change what a
// container finds at file (a binary of klock's), or in klock's mount
// directory: it is at or above file, or at or below MountPath. Paths are
// cleaned first, as the container runtime cleans them: //klock-bin/./klock
// is /klock-bin/klock.
func hidesKlock(mountPath, file string) bool {
	p := path.Clean("/" + mountPath)
	return p == "/" || p == file || strings.HasPrefix(file, p+"/") || p == MountPath || strings.HasPrefix(p, MountPath+"/")
}

// sameMount compares what decides which files a mount shows, and where.
func sameMount(a, b corev1.VolumeMount) bool {
	return a.Name == b.Name && a.MountPath == b.MountPath && a.ReadOnly == b.ReadOnly && a.SubPath == b.SubPath && a.SubPathExpr == b.SubPathExpr
}

// mounts counts the mounts of klock's volume.
func mounts(ms []corev1.VolumeMount) int {
	n := 0
	for _, m := range ms {
		if m.Name == VolumeName {
			n++
		}
	}
	return n
}

// head is what Mutate puts in front of the original argv.
func head(flags []string) []string {
	return append(append([]string{BinaryPath}, flags...), "--")
}

// index returns where sub starts in s, or -1.
func index(s, sub []string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if slices.Equal(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
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
// wrapped already, is left as it is, but for the gate below; one whose
// klock another webhook has since wrapped in its own command
// (reinvocation) gets klock back in front, running that webhook's wrapper
// and the original argv: whatever a command prefix does, it then does
// under the lock. A wrapped pod that opts.Gating gates (see Gating), in
// opts.GatingNamespaces, gets SchedulingGate and LabelGated, once; a pod that does not ask for klock
// but carries SchedulingGate is denied (see ForeignGate). The error, when
// not nil, is a field.ErrorList aggregate that says what to fix; the pod
// must then be denied, never admitted unwrapped.
func Mutate(pod *corev1.Pod, opts Options, image *ImageCommand) (warnings []string, err error) {
	if !Wants(pod) {
		if err := foreignGate(pod); err != nil {
			return nil, field.ErrorList{err}.ToAggregate()
		}
		return nil, nil
	}
	gated, gerrs := opts.gates(pod)
	if target, at, ok := opts.wrappedAt(pod); ok {
		// A pod created wrapped (a copy of a wrapped pod, or this
		// webhook's own on reinvocation) is gated as any other.
		if len(gerrs) > 0 {
			return nil, gerrs.ToAggregate()
		}
		if gated {
			gate(pod)
		}
		if at == 0 {
			return nil, nil
		}
		c := &pod.Spec.Containers[target]
		flags, _ := opts.flags(pod.Annotations)
		h := head(flags)
		argv := append(slices.Clone(c.Command), c.Args...)
		prefix := argv[:at]
		c.Command = append(append(slices.Clone(h), prefix...), argv[at+len(h):]...)
		c.Args = nil
		return []string{fmt.Sprintf("container %q: another webhook put %q in front of klock; klock runs first again, and starts it under the lock", c.Name, strings.Join(prefix, " "))}, nil
	}
	errs := gerrs
	flags, ferrs := opts.flags(pod.Annotations)
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

	c.Command = append(head(flags), argv...)
	c.Args = nil
	c.VolumeMounts = append(c.VolumeMounts, mount())
	c.Env = append(c.Env, opts.env()...)
	pod.Spec.Volumes = append(pod.Spec.Volumes, volume())
	pod.Spec.InitContainers = append([]corev1.Container{installer(opts)}, pod.Spec.InitContainers...)
	pod.Annotations[AnnotationInjected] = c.Name
	if gated {
		gate(pod)
	}
	return warnings, nil
}

// volume is the volume the installer copies klock into.
func volume() corev1.Volume {
	return corev1.Volume{
		Name: VolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("32Mi")),
		}},
	}
}

// mount is the wrapped container's mount of volume.
func mount() corev1.VolumeMount {
	return corev1.VolumeMount{Name: VolumeName, MountPath: MountPath, ReadOnly: true}
}

// env tells klock, in the wrapped container, its namespace and identity.
func env() []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: cli.EnvNamespace, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: cli.EnvIdentity, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	}
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
	// Another container that mounted klock's volume could replace the
	// binary the wrapped container runs.
	mountsOf := func(path *field.Path, ms []corev1.VolumeMount) {
		for i, m := range ms {
			if m.Name == VolumeName {
				errs = append(errs, field.Invalid(path.Child("volumeMounts").Index(i).Child("name"), m.Name,
					"klock's volume is mounted only by klock; remove this mount"))
			}
		}
	}
	for i, ic := range pod.Spec.InitContainers {
		mountsOf(spec.Child("initContainers").Index(i), ic.VolumeMounts)
	}
	for i, cc := range pod.Spec.Containers {
		mountsOf(spec.Child("containers").Index(i), cc.VolumeMounts)
	}
	for i, ec := range pod.Spec.EphemeralContainers {
		mountsOf(spec.Child("ephemeralContainers").Index(i), ec.VolumeMounts)
	}
	cpath := spec.Child("containers").Index(target)
	for i, m := range c.VolumeMounts {
		if hidesKlock(m.MountPath, BinaryPath) {
			reserved(cpath.Child("volumeMounts").Index(i).Child("mountPath"), m.MountPath)
		}
	}
	for i, e := range c.Env {
		if e.Name == cli.EnvNamespace || e.Name == cli.EnvIdentity || e.Name == cli.EnvAPICA {
			errs = append(errs, field.Invalid(cpath.Child("env").Index(i).Child("name"), e.Name,
				"klock sets this variable itself; remove it"))
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
