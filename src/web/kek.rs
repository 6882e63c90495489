//! The device key-encryption key as a non-extractable WebCrypto AES-GCM key,
//! kept in IndexedDB (`meta`, key `kek`). Script on the page can use it to
//! unwrap keys while the page runs, but no one can read its bytes, from the
//! page or from the database files.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AesGcmParams, AesKeyGenParams, CryptoKey, SubtleCrypto};

use crate::core::keys::{
    kek_aad, KeyError, KeyId, ThreadKey, KEY_LEN, NONCE_LEN, WRAPPED_KEY_LEN, WRAP_VERSION,
};
use crate::core::model::ThreadId;
use crate::ports::KeyWrapper;
use crate::web::idb::IdbStore;

const KEK_META_KEY: &str = "kek";

/// The device KEK in WebCrypto.
pub struct WebCryptoKek {
    subtle: SubtleCrypto,
    key: CryptoKey,
}

fn subtle() -> Result<SubtleCrypto, KeyError> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).map_err(|_| KeyError::UnwrapFailed)?;
    let crypto: web_sys::Crypto = crypto.dyn_into().map_err(|_| KeyError::UnwrapFailed)?;
    Ok(crypto.subtle())
}

impl WebCryptoKek {
    /// Loads the database's KEK, making it on first use. Two tabs racing to
    /// make it end up with the same one.
    pub async fn load_or_create(store: &IdbStore) -> Result<Self, crate::engine::Error> {
        let subtle = subtle()?;
        if let Some(key) = store.raw_meta(KEK_META_KEY).await? {
            if let Ok(key) = key.dyn_into::<CryptoKey>() {
                return Ok(WebCryptoKek { subtle, key });
            }
        }
        let params = AesKeyGenParams::new("AES-GCM", 256);
        let usages = js_sys::Array::of2(&"encrypt".into(), &"decrypt".into());
        let promise = subtle
            .generate_key_with_object(&params, false, &usages)
            .map_err(|e| crate::engine::Error::Seal(format!("could not make the device key: {e:?}")))?;
        let key = JsFuture::from(promise)
            .await
            .map_err(|e| crate::engine::Error::Seal(format!("could not make the device key: {e:?}")))?;
        let stored = store.raw_meta_insert(KEK_META_KEY, &key).await?;
        let key = stored
            .dyn_into::<CryptoKey>()
            .map_err(|_| crate::engine::Error::Seal("the stored device key is not a CryptoKey".into()))?;
        Ok(WebCryptoKek { subtle, key })
    }

    fn params(nonce: &[u8], aad: &[u8]) -> AesGcmParams {
        let params = AesGcmParams::new("AES-GCM", &Uint8Array::from(nonce));
        params.set_additional_data(&Uint8Array::from(aad));
        params
    }
}

impl KeyWrapper for WebCryptoKek {
    async fn wrap(&self, thread: ThreadId, key: &ThreadKey) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(KeyError::Random)?;
        let params = Self::params(&nonce, &kek_aad(thread, key.id()));
        let data = Uint8Array::from(&key.secret_bytes()[..]);
        let promise = self
            .subtle
            .encrypt_with_object_and_buffer_source(&params, &self.key, &data)
            .map_err(|_| KeyError::UnwrapFailed)?;
        let sealed = JsFuture::from(promise).await.map_err(|_| KeyError::UnwrapFailed)?;
        // The plaintext copy handed to JS is wiped as soon as it is used.
        data.fill(0, 0, KEY_LEN as u32);
        let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
        wrapped.push(WRAP_VERSION);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&Uint8Array::new(&sealed).to_vec());
        Ok(wrapped)
    }

    async fn unwrap(&self, thread: ThreadId, key_id: KeyId, wrapped: &[u8]) -> Result<ThreadKey, KeyError> {
        let (&version, rest) = wrapped.split_first().ok_or(KeyError::WrappedTruncated)?;
        if version != WRAP_VERSION {
            return Err(KeyError::WrappedVersion(version));
        }
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(KeyError::WrappedTruncated);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let params = Self::params(nonce, &kek_aad(thread, key_id));
        let promise = self
            .subtle
            .decrypt_with_object_and_u8_array(&params, &self.key, sealed)
            .map_err(|_| KeyError::UnwrapFailed)?;
        let plain = JsFuture::from(promise).await.map_err(|_| KeyError::UnwrapFailed)?;
        let plain = Uint8Array::new(&plain);
        let mut secret = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        if plain.length() as usize != KEY_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        plain.copy_to(&mut secret[..]);
        plain.fill(0, 0, KEY_LEN as u32);
        Ok(ThreadKey::from_parts(key_id, *secret))
    }
}
