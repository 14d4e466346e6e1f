/* tokenizer.h - vocabularies from GGUF metadata (SentencePiece and byte-level BPE), llama.cpp-exact
 * tokenization and detokenization.
 *
 * Supported: tokenizer.ggml.model "llama" (SentencePiece-style: scores, byte fallback,
 * tokenizer.ggml.add_space_prefix, user-defined tokens: Llama 2, Phi-3, Gemma) and "gpt2"
 * (byte-level BPE with tokenizer.ggml.merges) with tokenizer.ggml.pre one of the names listed by
 * nf_vocab_pre_names() (none means "default"). Other values are refused with NF_EVOCAB. */
#ifndef NF_TOKENIZER_H
#define NF_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct nf_vocab; /* opaque */

/* Reads tokenizer.ggml.* metadata into a vocabulary that does not depend on g afterwards.
 * Refuses unknown tokenizer.ggml.model / pre values (NF_EVOCAB) and malformed arrays
 * (NF_EKEYTYPE, NF_ENOKEY) with a one-line message in err naming the key. */
int nf_vocab_load(struct nf_vocab **out, const struct nf_gguf *g, char *err, size_t errlen);
void nf_vocab_free(struct nf_vocab *v);

int32_t nf_vocab_n_tokens(const struct nf_vocab *v);
int32_t nf_vocab_bos(const struct nf_vocab *v); /* -1 if none */
int32_t nf_vocab_eos(const struct nf_vocab *v); /* -1 if none */
/* tokenizer.ggml.add_bos_token, with llama.cpp's defaults per model type (SPM: true; BPE: true
 * for the Llama 3 and Tekken pre-tokenizers, false otherwise). */
bool nf_vocab_add_bos(const struct nf_vocab *v);
/* End of generation: eos, eot, eom, the fill-in-the-middle pad, repo and file-separator tokens
 * and the tokens llama.cpp recognizes by text (<|eot_id|>, <|im_end|>, <|end|>, <|endoftext|>,
 * </s>, ...; see tok_special.c). */
bool nf_vocab_is_eog(const struct nf_vocab *v, int32_t tok);
/* The token's text as stored in the vocabulary (NUL-terminated), or NULL if out of range. */
const char *nf_vocab_token_text(const struct nf_vocab *v, int32_t tok);
/* "spm" or "bpe". */
const char *nf_vocab_type_name(const struct nf_vocab *v);
/* Comma-separated list of the supported tokenizer.ggml.pre values (a static string). */
const char *nf_vocab_pre_names(void);

/* Tokenizes text[0..len). Returns the number of tokens n (>= 0); if n > max_out only the first
 * max_out were written (call again with a bigger buffer). Negative code on error. Same rules as
 * llama.cpp's llama_tokenize(add_special=add_bos, parse_special): add_bos adds BOS (and EOS when
 * tokenizer.ggml.add_eos_token says so) if the vocabulary asks for it; parse_special matches
 * control tokens in the text (user-defined tokens are always matched). */
int nf_tokenize(const struct nf_vocab *v, const char *text, size_t len, bool add_bos,
                bool parse_special, int32_t *out, int max_out);

/* nf_tokenize into a malloc'd array (*out, freed by the caller) with room for `extra` more ids
 * after the n it returns (a generation appends its tokens there). Returns n >= 0, or a negative
 * code with *out NULL. */
int nf_tokenize_alloc(const struct nf_vocab *v, const char *text, size_t len, bool add_bos,
                      bool parse_special, size_t extra, int32_t **out);

/* Writes the bytes of token tok's piece as llama.cpp's llama_token_to_piece(vocab, tok, buf, len,
 * lstrip=0, special=false) does (SPM: U+2581 -> space, <0xNN> byte tokens -> that byte; BPE:
 * byte-level unicode mapping undone; control tokens -> empty). Returns the byte count (if >
 * buflen nothing useful was written: call again with a bigger buffer) or a negative code. */
int nf_token_to_piece(const struct nf_vocab *v, int32_t tok, char *buf, int buflen);

/* Streaming: pieces may end inside a UTF-8 character. The detokenizer keeps the incomplete tail
 * and returns only complete characters. */
struct nf_detok {
    unsigned char pending[8];
    int n_pending;
};
void nf_detok_init(struct nf_detok *d);
/* Appends piece bytes; writes to out the longest prefix of (pending + piece) that ends on a
 * character boundary; returns its length (out needs piece_len + 8 bytes). */
int nf_detok_push(struct nf_detok *d, const char *piece, int piece_len, char *out);
/* Flushes whatever is pending (an incomplete sequence at the end of generation is emitted as
 * is). */
int nf_detok_flush(struct nf_detok *d, char *out);

#endif
