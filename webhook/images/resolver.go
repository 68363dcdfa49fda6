// Package images reads what an image runs: the ENTRYPOINT and CMD in its
// config, from its registry, with the credentials the kubelet would use,
// for the platform the pod will run on, and keeps what it read by digest.
// The pod handler asks it when a container sets no command.
package images

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/lru"

	"github.com/klock-io/klock/webhook/wrap"
)

// Resolver reads ENTRYPOINT and CMD from image configs in their
// registries, with the credentials the kubelet would use: the pod's
// imagePullSecrets and its service account's. Configs are cached by the
// digest of what the reference names, and by platform; a reference by tag
// still costs one manifest request (HEAD) to learn the digest, since tags
// move.
type Resolver struct {
	client   kubernetes.Interface
	platform v1.Platform
	cache    *lru.Cache
	opts     []remote.Option
}

// NewResolver returns a resolver that reads pull secrets with
// client, picks platform for images that have several unless the pod's
// nodeSelector names an OS or architecture, and caches up to cacheSize
// configs. transport may be nil.
func NewResolver(client kubernetes.Interface, platform v1.Platform, cacheSize int, transport http.RoundTripper) *Resolver {
	r := &Resolver{client: client, platform: platform, cache: lru.New(cacheSize)}
	if transport != nil {
		r.opts = append(r.opts, remote.WithTransport(transport))
	}
	return r
}

// Resolve returns what container c of pod runs when it sets no command:
// its image's ENTRYPOINT and CMD. An error says why the image could not be
// read.
func (r *Resolver) Resolve(ctx context.Context, pod *corev1.Pod, c *corev1.Container) (*wrap.ImageCommand, error) {
	ref, err := name.ParseReference(c.Image)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the image reference: %w", err)
	}
	platform := r.platformFor(pod)
	digest, byDigest := ref.(name.Digest)
	if byDigest {
		if cached, ok := r.cache.Get(cacheKey(digest, platform)); ok {
			return cached.(*wrap.ImageCommand), nil // no request at all
		}
	}
	keychain, err := r.keychain(ctx, pod)
	if err != nil {
		return nil, err
	}
	opts := append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain)}, r.opts...)
	if !byDigest {
		desc, err := remote.Head(ref, opts...)
		if err != nil {
			return nil, explain(err)
		}
		digest = ref.Context().Digest(desc.Digest.String())
		if cached, ok := r.cache.Get(cacheKey(digest, platform)); ok {
			return cached.(*wrap.ImageCommand), nil
		}
	}
	img, err := remote.Image(digest, append(opts, remote.WithPlatform(platform))...)
	if err != nil {
		return nil, explain(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cmd := &wrap.ImageCommand{Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd}
	r.cache.Add(cacheKey(digest, platform), cmd)
	return cmd, nil
}

func cacheKey(d name.Digest, p v1.Platform) string { return d.String() + " " + p.String() }

// explain adds the likely cause to a registry's refusal.
func explain(err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("%w (the pod's imagePullSecrets and its service account's hold no credentials this registry accepts)", err)
	}
	return err
}

func (r *Resolver) keychain(ctx context.Context, pod *corev1.Pod) (authn.Keychain, error) {
	var secrets []string
	for _, s := range pod.Spec.ImagePullSecrets {
		secrets = append(secrets, s.Name)
	}
	kc, err := kauth.New(ctx, r.client, kauth.Options{
		Namespace:          pod.Namespace,
		ServiceAccountName: pod.Spec.ServiceAccountName,
		ImagePullSecrets:   secrets,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the pod's pull secrets: %w", err)
	}
	return kc, nil
}

// platformFor is the platform the pod will run on, as far as admission can
// tell: its nodeSelector, else the resolver's default.
func (r *Resolver) platformFor(pod *corev1.Pod) v1.Platform {
	p := r.platform
	if os, ok := pod.Spec.NodeSelector[corev1.LabelOSStable]; ok {
		p.OS = os
	}
	if arch, ok := pod.Spec.NodeSelector[corev1.LabelArchStable]; ok {
		p.Architecture = arch
		p.Variant = ""
	}
	return p
}
