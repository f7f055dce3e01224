"""The node's image service (CRI ImageService shape): references, a content-addressed
blob store, registry pulls, archive imports, unpacked layers, and image GC.

The kubelet and the OCI runtime use :class:`kybernetes.images.service.ImageService`;
they never read the store's files themselves.
"""
