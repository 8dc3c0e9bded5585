//! Recording one run: kernels append compute passes to one command encoder, which is
//! submitted once when the run ends or when the CPU needs a value back (a readback is
//! the only reason to submit early). Pipelines are compiled once per WGSL source (the
//! source depends on the op, dtypes and rank, never on sizes: a shape class) and kept
//! in the context.

use super::device::GpuContext;
use super::tensor::{buffer_bytes, from_words, to_words, GpuTensor, PooledBuffer};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Threads per workgroup of the 1-D kernels.
pub const WG: u32 = 256;

/// The WGSL prelude of 1-D kernels: `linear_id(gid, nwg)` turns a 2-D dispatch (needed
/// past 65535 workgroups) back into one index.
pub const LINEAR: &str = "
fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}
";

pub struct Recorder<'a> {
    pub cx: &'a GpuContext,
    enc: Option<wgpu::CommandEncoder>,
    /// Dispatches since the last submission.
    pending: usize,
    /// Submissions this run (1 when no readback interrupts the GPU work).
    pub submissions: usize,
    /// Bytes uploaded and read back this run.
    pub uploaded: u64,
    pub downloaded: u64,
    /// Buffers freed during this run: reused by this run at once, given to the shared
    /// pool by [`Recorder::finish`] once the work is done.
    local: Arc<super::tensor::Pool>,
}

impl<'a> Recorder<'a> {
    pub fn new(cx: &'a GpuContext) -> Recorder<'a> {
        Recorder {
            cx,
            enc: None,
            pending: 0,
            submissions: 0,
            uploaded: 0,
            downloaded: 0,
            local: Arc::new(super::tensor::Pool::default()),
        }
    }

    /// Call after the last readback completed: this run's freed buffers become
    /// available to every run.
    pub fn finish(&mut self) {
        self.local.drain_into(&self.cx.pool);
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.enc.get_or_insert_with(|| {
            self.cx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("edgepredict run"),
                })
        })
    }

    /// A fresh output tensor (contents undefined: kernels write every element).
    pub fn alloc(&mut self, dtype: DType, shape: Vec<usize>) -> Result<GpuTensor> {
        let n: usize = crate::tensor::numel(&shape, DType::F32)?;
        let size = buffer_bytes(n);
        if size > self.cx.max_binding {
            return Err(Error::memory(format!(
                "a {dtype}{shape:?} tensor needs {size} bytes, over the GPU's binding limit of {} bytes",
                self.cx.max_binding
            )));
        }
        let buf = match self.local.take(size).or_else(|| self.cx.pool.take(size)) {
            Some(b) => b,
            None => self.cx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        Ok(GpuTensor {
            buf: Arc::new(PooledBuffer::new(buf, size, &self.local)),
            shape,
            dtype,
        })
    }

    /// Records a copy of `n` elements from `src` (from element `src_at`) into `dst` (from
    /// element `dst_at`): slices and stacks along the first axis (Scan, Loop).
    pub fn copy(
        &mut self,
        src: &GpuTensor,
        src_at: usize,
        dst: &GpuTensor,
        dst_at: usize,
        n: usize,
    ) -> Result<()> {
        if src_at + n > src.len() || dst_at + n > dst.len() {
            return Err(Error::runtime("GPU copy out of bounds"));
        }
        if n == 0 {
            return Ok(());
        }
        self.encoder().copy_buffer_to_buffer(
            src.buffer(),
            (src_at * 4) as u64,
            dst.buffer(),
            (dst_at * 4) as u64,
            (n * 4) as u64,
        );
        self.pending += 1;
        Ok(())
    }

    /// Puts a host tensor on the GPU. The buffer is new and filled at creation, so the
    /// upload cannot race with pooled buffers the pending commands still use.
    pub fn upload(&mut self, t: &Tensor) -> Result<GpuTensor> {
        let words = to_words(t)?;
        let size = buffer_bytes(words.len());
        if size > self.cx.max_binding {
            return Err(Error::memory(format!(
                "a {}{:?} tensor needs {size} bytes, over the GPU's binding limit",
                t.dtype(),
                t.shape()
            )));
        }
        let buf = self.cx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buf
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::device(format!("mapping an upload buffer failed: {e}")))?;
            let mut bytes = vec![0u8; size as usize];
            for (dst, w) in bytes.chunks_exact_mut(4).zip(&words) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
            view.copy_from_slice(&bytes);
        }
        buf.unmap();
        self.uploaded += size;
        Ok(GpuTensor {
            buf: Arc::new(PooledBuffer::new(buf, size, &self.local)),
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        })
    }

    /// The pipeline for `source` (compiled on first use, then cached by source).
    pub fn pipeline(&self, source: &str) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self
            .cx
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(source).cloned())
        {
            return Ok(p);
        }
        let scope = self
            .cx
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .cx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let p = self
            .cx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = block_on_ready(scope.pop()) {
            return Err(Error::device(format!(
                "a GPU kernel failed to compile (a bug, please report): {e}"
            )));
        }
        // The browser answers the scope asynchronously: the error, if any, is recorded and
        // fails the run at its readback.
        #[cfg(target_arch = "wasm32")]
        {
            let sink = self.cx.uncaptured_sink();
            let head: String = source.lines().take(3).collect::<Vec<_>>().join(" ");
            // Pop now (scopes are a stack), await the answer later.
            let answer = scope.pop();
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = answer.await {
                    if let Ok(mut v) = sink.lock() {
                        v.push(format!("a GPU kernel failed to compile ({head}…): {e}"));
                    }
                }
            });
        }
        let p = Arc::new(p);
        if let Ok(mut m) = self.cx.pipelines.lock() {
            m.insert(source.to_string(), p.clone());
        }
        Ok(p)
    }

    /// Records one dispatch of `source` with `buffers` at bindings 0.. in order and the
    /// `params` words (sizes, strides, bit-cast floats) at the next binding.
    pub fn dispatch(
        &mut self,
        source: &str,
        buffers: &[&wgpu::Buffer],
        params: &[u32],
        workgroups: [u32; 3],
    ) -> Result<()> {
        if workgroups.contains(&0) {
            return Ok(());
        }
        if workgroups.iter().any(|&w| w > self.cx.max_workgroups) {
            return Err(Error::device(format!(
                "dispatch of {workgroups:?} workgroups exceeds the device limit {}",
                self.cx.max_workgroups
            )));
        }
        let pipeline = self.pipeline(source)?;
        let mut words = params.to_vec();
        if words.is_empty() {
            words.push(0);
        }
        let pbuf = {
            use wgpu::util::DeviceExt;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.cx
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                })
        };
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: pbuf.as_entire_binding(),
        });
        let bg = self
            .cx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
        let enc = self.encoder();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        self.pending += 1;
        Ok(())
    }

    /// Workgroups for `n` threads of a 1-D kernel (see [`LINEAR`]).
    pub fn grid(&self, n: usize) -> [u32; 3] {
        let groups = n.div_ceil(WG as usize) as u64;
        let max = self.cx.max_workgroups as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            // Rows of full width: the kernel's linear id runs past n and must bound-check.
            [max as u32, groups.div_ceil(max) as u32, 1]
        }
    }

    /// Submits what was recorded.
    pub fn flush(&mut self) {
        if let Some(enc) = self.enc.take() {
            self.cx.queue.submit(Some(enc.finish()));
            self.submissions += 1;
            self.pending = 0;
        }
    }

    /// Reads tensors back: one submission and one wait for all of them.
    pub async fn download(&mut self, ts: &[&GpuTensor]) -> Result<Vec<Tensor>> {
        let mut staging = Vec::with_capacity(ts.len());
        for t in ts {
            let size = buffer_bytes(t.len());
            let s = self.cx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.encoder()
                .copy_buffer_to_buffer(t.buffer(), 0, &s, 0, size);
            staging.push(s);
            self.downloaded += size;
        }
        let scope = self
            .cx
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.flush();
        let oom = scope.pop();
        let mut out = Vec::with_capacity(ts.len());
        for (t, s) in ts.iter().zip(&staging) {
            let words = map_read(self.cx, s).await?;
            out.push(from_words(t.dtype, t.shape.clone(), &words)?);
        }
        if let Some(e) = oom.await {
            return Err(Error::device(format!("the GPU ran out of memory: {e}")));
        }
        let errs = self.cx.take_uncaptured();
        if !errs.is_empty() {
            return Err(Error::device(format!(
                "GPU error during the run: {}",
                errs.join("; ")
            )));
        }
        Ok(out)
    }
}

/// Maps a staging buffer and copies its words out.
async fn map_read(cx: &GpuContext, s: &wgpu::Buffer) -> Result<Vec<u32>> {
    let (tx, rx) = oneshot();
    s.slice(..)
        .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
    #[cfg(not(target_arch = "wasm32"))]
    cx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| {
            cx.mark_lost(&e.to_string());
            Error::device(format!("waiting for the GPU failed: {e}"))
        })?;
    let r = rx.await;
    match r {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return Err(Error::device(format!(
                "reading back from the GPU failed: {e}"
            )))
        }
        None => return Err(Error::device("the GPU readback never completed")),
    }
    if let Some(why) = cx.lost() {
        return Err(Error::device(format!("the GPU device was lost: {why}")));
    }
    let words = {
        let view = s
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::device(format!("mapping the readback buffer failed: {e}")))?;
        view.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    s.unmap();
    Ok(words)
}

/// A one-shot channel from a wgpu callback to an awaiting future, without a runtime.
fn oneshot<T: Send + 'static>() -> (OneTx<T>, OneRx<T>) {
    let shared = Arc::new(std::sync::Mutex::new(OneState {
        value: None,
        done: false,
        waker: None,
    }));
    (OneTx(shared.clone()), OneRx(shared))
}

struct OneState<T> {
    value: Option<T>,
    done: bool,
    waker: Option<std::task::Waker>,
}
struct OneTx<T>(Arc<std::sync::Mutex<OneState<T>>>);
struct OneRx<T>(Arc<std::sync::Mutex<OneState<T>>>);

impl<T> OneTx<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
            s.done = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}
impl<T> Drop for OneTx<T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.done = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}
impl<T> std::future::Future for OneRx<T> {
    type Output = Option<T>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let Ok(mut s) = self.0.lock() else {
            return std::task::Poll::Ready(None);
        };
        if s.done {
            std::task::Poll::Ready(s.value.take())
        } else {
            s.waker = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    }
}

/// Natively, error scopes resolve at once: waits for one without a runtime.
#[cfg(not(target_arch = "wasm32"))]
fn block_on_ready<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
