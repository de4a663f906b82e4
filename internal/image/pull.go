package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/sessiond/sessiond/internal/errkind"
)

// PullOptions are the settings of one Pull. The zero value pulls anonymously over HTTPS
// with the default limits.
type PullOptions struct {
	// Username and Password are the registry credentials; both empty pulls anonymously.
	// They are sent as basic auth or exchanged for a bearer token, as the registry asks.
	Username string
	Password string
	// Insecure allows plain HTTP and TLS without certificate verification. Without it,
	// plain HTTP is used only for loopback registries (localhost, 127.0.0.0/8, ::1); any
	// other plain-HTTP request, a registry on a private address or a redirect included,
	// is upgraded to HTTPS.
	Insecure bool
	// MaxSize caps the total size of the image's layers as downloaded, and separately the
	// file content they unpack to. Zero means DefaultMaxPullSize.
	MaxSize int64
	// MaxLayers caps the number of layers. Zero means DefaultMaxLayers.
	MaxLayers int
}

const (
	// DefaultMaxPullSize is the default PullOptions.MaxSize, the same bound an imported
	// layer has (DefaultLimits.MaxSize): the biggest public images stay below it.
	DefaultMaxPullSize = 20 << 30
	// DefaultMaxLayers is the default PullOptions.MaxLayers. Docker builds stop at 127
	// layers; twice that leaves room for other builders.
	DefaultMaxLayers = 256
	// maxConfigSize bounds the image config, which is read into memory. Real configs are
	// a few KiB, up to some hundreds with a long history.
	maxConfigSize = 4 << 20
	// pullJobs is how many layers download at once. Layers unpack one at a time, in order,
	// as soon as each has arrived.
	pullJobs = 3
)

// Pull fetches the image ref names from its registry, unpacks it and names it in the
// store, and returns it. ref is a Docker-style reference: "registry/repo:tag",
// "registry/repo@sha256:<hex>", or a short form ("alpine", "library/alpine:3") that means
// Docker Hub. The image is named by the reference's canonical form, such as
// "index.docker.io/library/alpine:latest" (Image.Name).
//
// A multi-platform index resolves to its linux image for this machine's architecture.
// Docker schema 2 and OCI manifests are accepted; layers may be gzip, zstd or
// uncompressed tar. The image config is recorded in Image.Config.
//
// Pull always asks the registry what the reference points to (so access is checked and a
// moved tag is seen), but downloads nothing more when an image with that digest is in the
// store, and no layer blob the store already holds. Every blob is verified against its
// digest and every unpacked layer against the config's diff ID, so a pulled image's ID
// (its config digest) vouches for its whole content. When a tag moved, the name moves to
// the new image and the old one stays in the store, unnamed, until removed.
//
// Pull is atomic like Import: the image is assembled in tmp/ and published only when
// complete; any failure, cancellation of ctx included, leaves the store as it was.
//
// Errors: Invalid for a bad reference, refused credentials, content that does not match
// its digest, an image that is not a container image for this platform, or a hostile or
// corrupt layer; NotFound when the registry has no such image; LimitExceeded (see
// PullOptions); Unavailable when the registry cannot be reached or fails; ctx's error when
// it ends.
func (s *Store) Pull(ctx context.Context, ref string, opts PullOptions) (Image, error) {
	p, err := newPuller(ref, opts)
	if err != nil {
		return Image{}, err
	}
	img, err := s.pull(ctx, p)
	p.tr.CloseIdleConnections()
	if err != nil {
		return Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

// puller is the state of one Pull.
type puller struct {
	ref  name.Reference
	name string // the canonical reference, the image's name in the store
	opts PullOptions
	tr   *schemeGuard
}

func newPuller(ref string, opts PullOptions) (*puller, error) {
	if opts.MaxSize <= 0 {
		opts.MaxSize = DefaultMaxPullSize
	}
	if opts.MaxLayers <= 0 {
		opts.MaxLayers = DefaultMaxLayers
	}
	if (opts.Username == "") != (opts.Password == "") {
		return nil, errkind.New(errkind.Invalid, "pulling %s: give both a registry username and a password, or neither", ref)
	}
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, errkind.New(errkind.Invalid, "invalid image reference %q: %v", ref, err)
	}
	p := &puller{ref: r, name: r.Name(), opts: opts, tr: newTransport(opts.Insecure)}
	if err := checkName(p.name); err != nil {
		return nil, err
	}
	return p, nil
}

// registry returns the registry's host, as error messages name it.
func (p *puller) registry() string { return p.ref.Context().RegistryStr() }

// remote returns the options for go-containerregistry's remote calls under ctx.
func (p *puller) remote(ctx context.Context) []remote.Option {
	ro := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(p.tr),
		remote.WithPlatform(platform()),
		remote.WithUserAgent("sessiond"),
	}
	if p.opts.Username != "" {
		ro = append(ro, remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: p.opts.Username, Password: p.opts.Password})))
	}
	return ro
}

// platform is the platform whose image Pull picks from a multi-platform index.
func platform() v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm64" {
		p.Variant = "v8"
	}
	return p
}

func (s *Store) pull(ctx context.Context, p *puller) (Image, error) {
	done, err := s.busy()
	if err != nil {
		return Image{}, err
	}
	defer done()
	// One cancel stops every request of this pull, those of other layers' downloads
	// included, when any step fails; errStopped tells that from the caller's cancellation.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	desc, err := remote.Get(p.ref, p.remote(ctx)...)
	if err != nil {
		return Image{}, p.registryError(ctx, "fetching the manifest", err)
	}
	digest := desc.Digest.String()
	if known, ok, err := s.byDigest(digest); err != nil {
		return Image{}, err
	} else if ok {
		img, _, err := s.commit(Image{Name: p.name, ID: known.ID, Digest: digest, Size: known.Size, Config: known.Config}, "", "")
		return img, err
	}

	im, err := p.image(ctx, desc)
	if err != nil {
		return Image{}, err
	}
	m, cf, err := p.check(ctx, im)
	if err != nil {
		return Image{}, err
	}
	rec := Image{Name: p.name, ID: m.Config.Digest.String(), Digest: digest, Config: configOf(cf)}
	if known, ok, err := s.byID(rec.ID); err != nil {
		return Image{}, err
	} else if ok {
		// The same content under another manifest (another tag's, or recompressed).
		rec.Size = known.Size
		img, _, err := s.commit(rec, "", "")
		return img, err
	}

	work, err := os.MkdirTemp(s.tmpDir(), "pull-")
	if err != nil {
		return Image{}, err
	}
	defer removeTree(work)
	tree, blobs := filepath.Join(work, "rootfs"), filepath.Join(work, "blobs")
	for _, d := range []string{tree, blobs} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return Image{}, err
		}
	}
	if err := os.Chmod(tree, 0o755); err != nil {
		return Image{}, err
	}
	rec.Size, err = p.fetchAndUnpack(ctx, func() { cancel(errStopped) }, s, im, m, cf, tree, blobs)
	if err != nil {
		return Image{}, err
	}
	for _, l := range m.Layers {
		rec.Layers = append(rec.Layers, l.Digest.String())
	}
	// Make the content durable before the renames publish it (see Import).
	if err := syncFS(work); err != nil {
		return Image{}, err
	}
	// Whatever commit did not move out of work (all of it on failure, blobs the store had
	// already on success) is deleted with it.
	img, _, err := s.commit(rec, tree, blobs)
	return img, err
}

// byDigest returns an image pulled by the registry digest d.
func (s *Store) byDigest(d string) (Image, bool, error) {
	ix, err := s.readIndex()
	if err != nil {
		return Image{}, false, err
	}
	i := slices.IndexFunc(ix.Images, func(im Image) bool { return im.Digest == d })
	if i < 0 {
		return Image{}, false, nil
	}
	return ix.Images[i], true, nil
}

// byID returns an image whose ID is id.
func (s *Store) byID(id string) (Image, bool, error) {
	ix, err := s.readIndex()
	if err != nil {
		return Image{}, false, err
	}
	if recs := ix.byID(id); len(recs) > 0 {
		return recs[0], true, nil
	}
	return Image{}, false, nil
}

// image returns the image desc describes, resolving an index to this platform's image.
func (p *puller) image(ctx context.Context, desc *remote.Descriptor) (v1.Image, error) {
	switch desc.MediaType {
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return nil, errkind.New(errkind.Invalid, "the image is a Docker schema 1 image, which is not supported: push it again with a current client")
	case types.OCIImageIndex, types.DockerManifestList:
	default:
		im, err := desc.Image()
		if err != nil {
			return nil, p.registryError(ctx, "reading the manifest", err)
		}
		return im, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, p.registryError(ctx, "reading the index", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, p.registryError(ctx, "reading the index", err)
	}
	want := platform()
	var have []string
	for _, c := range im.Manifests {
		cp := c.Platform
		if cp == nil {
			cp = &v1.Platform{OS: "linux", Architecture: "amd64"} // what Docker assumes
		}
		if cp.OS == want.OS && cp.Architecture == want.Architecture && (cp.Variant == "" || cp.Variant == want.Variant) {
			if !c.MediaType.IsImage() {
				return nil, errkind.New(errkind.Invalid, "the %s entry of the index is a %s, not an image manifest", platformString(want), c.MediaType)
			}
			child, err := idx.Image(c.Digest)
			if err != nil {
				return nil, p.registryError(ctx, "reading the manifest", err)
			}
			return child, nil
		}
		have = append(have, platformString(*cp))
	}
	return nil, errkind.New(errkind.NotFound, "the index has no image for %s (it has %s)", platformString(want), strings.Join(have, ", "))
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// check reads im's manifest and config and checks them against the limits and this
// platform before anything big is downloaded.
func (p *puller) check(ctx context.Context, im v1.Image) (*v1.Manifest, *v1.ConfigFile, error) {
	m, err := im.Manifest()
	if err != nil {
		return nil, nil, p.registryError(ctx, "reading the manifest", err)
	}
	switch m.Config.MediaType {
	case types.DockerConfigJSON, types.OCIConfigJSON:
	default:
		return nil, nil, errkind.New(errkind.Invalid, "not a container image: its config is a %q", m.Config.MediaType)
	}
	if m.Config.Digest.Algorithm != "sha256" {
		return nil, nil, errkind.New(errkind.Invalid, "config digest %s: only sha256 digests are supported", m.Config.Digest)
	}
	if m.Config.Size < 0 || m.Config.Size > maxConfigSize {
		return nil, nil, errkind.New(errkind.LimitExceeded, "the image config is %d bytes, more than the %d allowed", m.Config.Size, maxConfigSize)
	}
	if len(m.Layers) > p.opts.MaxLayers {
		return nil, nil, errkind.New(errkind.LimitExceeded, "the image has %d layers, more than the %d allowed", len(m.Layers), p.opts.MaxLayers)
	}
	var total int64
	for _, l := range m.Layers {
		switch l.MediaType {
		case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer:
		default:
			return nil, nil, errkind.New(errkind.Invalid, "layer %s has media type %q, which is not a Linux layer that can be unpacked", l.Digest, l.MediaType)
		}
		if l.Digest.Algorithm != "sha256" || len(l.Digest.Hex) != sha256.Size*2 || !isHex(l.Digest.Hex) {
			return nil, nil, errkind.New(errkind.Invalid, "layer digest %q: only sha256 digests are supported", l.Digest)
		}
		if l.Size < 0 || l.Size > p.opts.MaxSize-total {
			return nil, nil, errkind.New(errkind.LimitExceeded, "the image's layers are larger than the %d bytes allowed", p.opts.MaxSize)
		}
		total += l.Size
	}
	raw, err := im.RawConfigFile()
	if err != nil {
		return nil, nil, p.registryError(ctx, "fetching the image config", err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, errkind.New(errkind.Invalid, "parsing the image config: %v", err)
	}
	want := platform()
	if cf.OS != "" && cf.OS != want.OS || cf.Architecture != "" && cf.Architecture != want.Architecture {
		return nil, nil, errkind.New(errkind.Invalid, "the image is for %s/%s; this machine runs %s/%s", cf.OS, cf.Architecture, want.OS, want.Architecture)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, errkind.New(errkind.Invalid, "the manifest has %d layers but the config lists %d", len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	return m, cf, nil
}

// configOf extracts what a runtime needs from an image config.
func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	cfg := Config{
		Env:        c.Env,
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		WorkingDir: c.WorkingDir,
		User:       c.User,
		Labels:     c.Labels,
	}
	for port := range c.ExposedPorts {
		cfg.ExposedPorts = append(cfg.ExposedPorts, port)
	}
	slices.Sort(cfg.ExposedPorts)
	return cfg
}

// errStopped is the cause with which a pull cancels its own requests after a failure.
var errStopped = errors.New("pull stopped after an error")

// fetchAndUnpack downloads the layers into blobDir (pullJobs at a time, or links them from
// the store's blobs) and applies them in order to tree as each arrives. It returns the
// bytes of file content unpacked. stop cancels ctx, the context of every request of the
// pull, with errStopped; fetchAndUnpack calls it on any failure and returns only when
// every download has stopped.
func (p *puller) fetchAndUnpack(ctx context.Context, stop func(), s *Store, im v1.Image, m *v1.Manifest, cf *v1.ConfigFile, tree, blobDir string) (int64, error) {
	// A layer may appear more than once (old builders repeated the empty layer): each
	// distinct blob is fetched once, and every use of it waits for the same channel.
	ready := map[v1.Hash]chan struct{}{}
	var fetch []int // the first use of each distinct blob
	for i, l := range m.Layers {
		if ready[l.Digest] == nil {
			ready[l.Digest] = make(chan struct{})
			fetch = append(fetch, i)
		}
	}
	var g errgroup.Group
	g.Go(func() error {
		sem := make(chan struct{}, pullJobs)
		for _, i := range fetch {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			l := m.Layers[i]
			g.Go(func() error {
				defer func() { <-sem }()
				if err := p.fetchBlob(ctx, s, im, l, blobDir); err != nil {
					stop()
					return fmt.Errorf("layer %d of %d (%s): %w", i+1, len(m.Layers), l.Digest, err)
				}
				close(ready[l.Digest])
				return nil
			})
		}
		return nil
	})
	size, err := p.unpack(ctx, m, cf, tree, blobDir, ready)
	if err != nil {
		stop()
	}
	werr := g.Wait()
	switch {
	case err == nil && werr == nil:
		return size, nil
	case ctx.Err() != nil && !errors.Is(context.Cause(ctx), errStopped):
		return 0, ctxErr(ctx) // the caller's cancellation or deadline
	case err == nil || errors.Is(err, errStopped):
		// A download failed and stopped the unpacking. errgroup keeps the first error:
		// the failure, not the cancellations it caused.
		return 0, werr
	}
	return 0, err
}

// unpack applies the layers to tree in order, each once its blob's ready channel is closed,
// and returns the bytes of file content written.
func (p *puller) unpack(ctx context.Context, m *v1.Manifest, cf *v1.ConfigFile, tree, blobDir string, ready map[v1.Hash]chan struct{}) (int64, error) {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	var size int64
	var entries int
	for i, l := range m.Layers {
		select {
		case <-ready[l.Digest]:
		case <-ctx.Done():
			return 0, ctxErr(ctx)
		}
		f, err := os.Open(filepath.Join(blobDir, l.Digest.Hex))
		if err != nil {
			return 0, err
		}
		// ApplyLayer reads a zero limit as its default, so an exhausted budget is 1; the
		// totals are checked after the layer.
		lim := Limits{MaxSize: max(p.opts.MaxSize-size, 1), MaxEntries: max(DefaultLimits.MaxEntries-entries, 1)}
		diffID, stats, err := applyCompressed(ctx, root, f, lim)
		f.Close()
		size += stats.Size
		entries += stats.Entries
		if errkind.Is(err, errkind.LimitExceeded) || err == nil && (size > p.opts.MaxSize || entries > DefaultLimits.MaxEntries) {
			return 0, errkind.New(errkind.LimitExceeded, "the image unpacks to more than %d bytes or %d entries", p.opts.MaxSize, DefaultLimits.MaxEntries)
		}
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctxErr(ctx)
			}
			return 0, fmt.Errorf("unpacking layer %d of %d (%s): %w", i+1, len(m.Layers), l.Digest, err)
		}
		if want := cf.RootFS.DiffIDs[i].String(); diffID != want {
			return 0, errkind.New(errkind.Invalid, "layer %d of %d (%s) unpacks to content %s, but the config says %s", i+1, len(m.Layers), l.Digest, diffID, want)
		}
	}
	return size, nil
}

// fetchBlob puts the verified blob of layer l at blobDir/<hex>: a hard link to the store's
// copy when it has one, else a download.
func (p *puller) fetchBlob(ctx context.Context, s *Store, im v1.Image, l v1.Descriptor, blobDir string) error {
	dst := filepath.Join(blobDir, l.Digest.Hex)
	// A link, unlike a check for existence, keeps the blob even if Remove collects the
	// store's copy before this pull commits.
	if err := os.Link(s.blobPath(l.Digest.String()), dst); err == nil {
		return nil
	}
	layer, err := im.LayerByDigest(l.Digest)
	if err != nil {
		return p.registryError(ctx, "fetching the layer", err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return p.registryError(ctx, "fetching the layer", err)
	}
	defer rc.Close()
	part := dst + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(part) // fails harmlessly after the rename
	h := sha256.New()
	src := &sourceReader{r: io.LimitReader(rc, l.Size+1)}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch got := idPrefix + hex.EncodeToString(h.Sum(nil)); {
	case ctx.Err() != nil:
		return ctxErr(ctx)
	case n > l.Size:
		return errkind.New(errkind.Invalid, "the registry sent more than the %d bytes the manifest gives", l.Size)
	case n == l.Size && got != l.Digest.String():
		// go-containerregistry's own check may have failed the read first; this one
		// says what happened.
		return errkind.New(errkind.Invalid, "the downloaded layer does not match its digest (got %s)", got)
	case src.err != nil:
		return p.registryError(ctx, "downloading the layer", src.err)
	case err != nil:
		return fmt.Errorf("writing the layer: %w", err)
	case n < l.Size:
		return errkind.New(errkind.Invalid, "the registry sent %d of the %d bytes the manifest gives", n, l.Size)
	}
	return os.Rename(part, dst)
}
