// multipart/form-data bodies: validation, shape (parsed back with a real
// parser: the fetch API's Response.formData()), escaping and the boundary.
import { describe, expect, it } from 'vitest';
import { buildMultipart, decodeBase64, withoutContentType } from '../../src/http/index.js';

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

async function parse(parts: unknown): Promise<FormData> {
  const { body, contentType } = buildMultipart(parts);
  return new Response(body, { headers: { 'content-type': contentType } }).formData();
}

describe('buildMultipart', () => {
  it('builds a body a multipart parser reads back', async () => {
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0xff, 0x0d, 0x0a]);
    const form = await parse([
      { name: 'note', data_b64: b64('hello, world') },
      { name: 'image', data_b64: b64(png), filename: 'a.png', content_type: 'image/png' },
      { name: 'blob', data_b64: b64('raw'), filename: 'data.bin' },
      { name: 'empty', data_b64: '' },
    ]);
    expect(form.get('note')).toBe('hello, world');
    const image = form.get('image') as File;
    expect(image.name).toBe('a.png');
    expect(image.type).toBe('image/png');
    expect(Buffer.from(await image.arrayBuffer())).toEqual(png);
    const blob = form.get('blob') as File;
    expect(blob.type).toBe('application/octet-stream');
    expect(await blob.text()).toBe('raw');
    expect(form.get('empty')).toBe('');
  });

  it('writes the exact RFC 7578 shape', () => {
    const { body, contentType } = buildMultipart([
      { name: 'a', data_b64: b64('1') },
      { name: 'f', data_b64: b64('2'), filename: 'x.txt', content_type: 'text/plain; charset=utf-8' },
    ]);
    const boundary = /^multipart\/form-data; boundary=(\S+)$/.exec(contentType)![1]!;
    expect(boundary.length).toBeLessThanOrEqual(70);
    expect(body.toString()).toBe(
      `--${boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="f"; filename="x.txt"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n2\r\n` +
        `--${boundary}--\r\n`,
    );
  });

  it('escapes quotes and line breaks in names and file names as browsers do', async () => {
    const { body } = buildMultipart([{ name: 'a"b\r\nc', data_b64: b64('x'), filename: 'q"\n.txt' }]);
    expect(body.toString()).toContain('Content-Disposition: form-data; name="a%22b%0D%0Ac"; filename="q%22%0A.txt"\r\n');
    // a parser turns the escapes back (non-ASCII is sent as UTF-8)
    const form = await parse([{ name: 'ünï"', data_b64: b64('x') }]);
    expect([...form.keys()]).toEqual(['ünï"']);
  });

  it('uses a random boundary that occurs in no part', () => {
    const a = buildMultipart([{ name: 'a', data_b64: b64('x') }]).contentType;
    const b = buildMultipart([{ name: 'a', data_b64: b64('x') }]).contentType;
    expect(a).not.toBe(b);
    const { body, contentType } = buildMultipart([{ name: 'a', data_b64: b64('----pgdurable and more') }]);
    const boundary = contentType.slice(contentType.indexOf('=') + 1);
    expect(body.toString().split(`--${boundary}`)).toHaveLength(3); // opening, closing, nothing else
  });

  it('accepts base64 wrapped at 76 columns (PostgreSQL encode()) and without padding', async () => {
    const data = Buffer.alloc(200, 7);
    const wrapped = data.toString('base64').replace(/.{76}/g, '$&\n');
    expect(wrapped).toContain('\n');
    const form = await parse([{ name: 'f', data_b64: wrapped, filename: 'f' }]);
    expect(Buffer.from(await (form.get('f') as File).arrayBuffer())).toEqual(data);
    expect(decodeBase64(' aGk \r\n\t')).toEqual(Buffer.from('hi'));
    expect(decodeBase64('aGk=')).toEqual(Buffer.from('hi'));
  });

  it.each([
    [{}, 'df.http_multipart: parts must be a JSON array of objects'],
    ['[]', 'df.http_multipart: parts must be a JSON array of objects'],
    [[], 'df.http_multipart: parts must not be empty'],
    [[5], 'df.http_multipart: part 1 is not an object'],
    [[null], 'df.http_multipart: part 1 is not an object'],
    [[{ name: 'a', data_b64: '' }, { name: 'b' }], 'df.http_multipart: part 2 has no "data_b64"'],
    [[{ data_b64: '' }], 'df.http_multipart: part 1 has no "name"'],
    [[{ name: 3, data_b64: '' }], 'df.http_multipart: part 1: "name" must be a string'],
    [[{ name: '', data_b64: '' }], 'df.http_multipart: part 1: "name" is empty'],
    [[{ name: 'a', data_b64: 'aGk=', filename: 1 }], 'df.http_multipart: part 1: "filename" must be a string'],
    [[{ name: 'a', data_b64: 'aGk=', content_type: 'image/png\r\nX-Evil: 1' }], 'df.http_multipart: part 1: "content_type" is not a media type'],
    [[{ name: 'a', data_b64: 'aGk=', contentType: 'x/y' }], 'df.http_multipart: part 1 has unknown fields "contentType"'],
    [[{ name: 'a', data_b64: 'a$Gk' }], 'df.http_multipart: part 1: "data_b64" is not valid base64'],
    [[{ name: 'a', data_b64: 'aGk=aGk=' }], 'df.http_multipart: part 1: "data_b64" is not valid base64'],
    [[{ name: 'a', data_b64: 'aGkhx' }], 'df.http_multipart: part 1: "data_b64" is not valid base64'],
    [[{ name: 'a', data_b64: 'aG-_' }], 'df.http_multipart: part 1: "data_b64" is not valid base64'],
  ])('refuses %j', (parts, message) => {
    expect(() => buildMultipart(parts)).toThrow(message);
  });
});

describe('withoutContentType', () => {
  it('drops Content-Type in any case and keeps the rest', () => {
    expect(withoutContentType({ 'Content-Type': 'a/b', 'CONTENT-TYPE': 'c/d', 'content-type': 'e/f', Authorization: 'x', 'Idempotency-Key': 'k' })).toEqual({
      Authorization: 'x',
      'Idempotency-Key': 'k',
    });
  });
});
