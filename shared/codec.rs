//! The gRPC codec of every herd service: prost, with a small first buffer per call.
//!
//! tonic gives every call (so every worker's heartbeat stream, for as long as it is
//! open) an 8 KiB encode and an 8 KiB decode buffer to begin with; herd's messages are a
//! few hundred bytes, and a buffer still grows to whatever a large message needs (a batch
//! of 10,000 tasks, a chunk of output). At 10,000 open streams that was 160 MiB reserved
//! for heartbeats of ~100 bytes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first buffer of a call's encoder and decoder.
pub const FIRST_BUFFER: usize = 1024;
/// tonic's own: a streamed response is sent once this much is encoded.
const YIELD_AT: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_AT)
}

/// prost encoding and decoding (what tonic's generated code uses by default), with
/// [`FIRST_BUFFER`].
#[derive(Debug, Clone, Copy)]
pub struct HerdCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for HerdCodec<T, U> {
    fn default() -> Self {
        HerdCodec(PhantomData)
    }
}

impl<T, U> Codec for HerdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
